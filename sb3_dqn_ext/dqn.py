"""The shared base of every algorithm in this package: SB3's DQN with one ``train()`` loop and its seams."""

from typing import TypeVar

import numpy as np
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.type_aliases import MaybeCallback, ReplayBufferSamples
from torch.nn import functional as F

SelfBaseDQN = TypeVar("SelfBaseDQN", bound="BaseDQN")


class BaseDQN(DQN):
    """
    Deep Q-Network (DQN) with seams for the target and the loss

    Paper: https://arxiv.org/abs/1312.5602, https://www.nature.com/articles/nature14236
    Parameters are those of :class:`stable_baselines3.DQN`.

    This class owns the one ``train()`` loop of the package. With its default seams it is SB3's DQN
    step for step: the same random draws, the same operations in the same order, so the same seed gives
    bit-identical parameters (``tests/test_targets.py`` pins this). The variants override the seams only:

    - :meth:`_next_q_values`: the value of the next state (max over the target network here,
      the Double-DQN evaluation in :class:`~sb3_dqn_ext.DoubleDQN`);
    - :meth:`_compute_loss`: the Huber loss (weighted and followed by a priority update when the replay
      buffer is prioritized).

    Differs from SB3: ``train()`` keeps the losses on the device and reads them back once per call to
    ``train()`` instead of once per gradient step (``loss.item()``), so the loop does not wait for the
    device after every step. The parameters are unchanged by this; only the logged mean loss is computed
    in float32 on the device instead of float64 on the host. ``tau`` is checked to lie in ``(0, 1]``
    (``tau=0`` would silently freeze the target network). ``learn()`` names TensorBoard runs after the class.
    """

    def _setup_model(self) -> None:
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1] (1 for hard target updates), got {self.tau}")
        super()._setup_model()

    def _next_q_values(self, next_observations: th.Tensor) -> th.Tensor:
        """
        Value of the next states used in the TD target (called under ``th.no_grad()``).

        DQN: ``max_a Q_target(s', a)``.

        :param next_observations: Next observations of the batch
        :return: The next-state values, shape ``(batch_size, 1)``
        """
        next_q_values = self.q_net_target(next_observations)  # (batch_size, n_actions)
        # Follow greedy policy: use the one with the highest value
        next_q_values, _ = next_q_values.max(dim=1)
        # Avoid potential broadcast issue
        return next_q_values.reshape(-1, 1)  # (batch_size, 1)

    def _compute_loss(
        self,
        current_q_values: th.Tensor,
        target_q_values: th.Tensor,
        replay_data: ReplayBufferSamples,
    ) -> th.Tensor:
        """
        Loss of one gradient step.

        :param current_q_values: ``Q(s, a)`` of the sampled actions, shape ``(batch_size, 1)``
        :param target_q_values: TD targets, shape ``(batch_size, 1)``, no gradient
        :param replay_data: The sampled batch
        :return: The scalar loss to minimise
        """
        # Compute Huber loss (less sensitive to outliers)
        return F.smooth_l1_loss(current_q_values, target_q_values)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update learning rate according to schedule
        self._update_learning_rate(self.policy.optimizer)

        losses = []
        for _ in range(gradient_steps):
            # Sample replay buffer
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            # For n-step replay, discount factor is gamma**n_steps (when no early termination)
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

            with th.no_grad():
                next_q_values = self._next_q_values(replay_data.next_observations)  # (batch_size, 1)
                # 1-step (or n-step) TD target
                target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

            # Get current Q-values estimates
            current_q_values = self.q_net(replay_data.observations)  # (batch_size, n_actions)

            # Retrieve the q-values for the actions from the replay buffer
            current_q_values = th.gather(current_q_values, dim=1, index=replay_data.actions.long())  # (batch_size, 1)

            loss = self._compute_loss(current_q_values, target_q_values, replay_data)
            # No host sync here: the losses are read back once, after the loop
            losses.append(loss.detach())

            # Optimize the policy
            self.policy.optimizer.zero_grad()
            loss.backward()
            # Clip gradient norm
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()

        # Increase update counter
        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if losses:
            self.logger.record("train/loss", th.stack(losses).mean().item())
        else:  # same as SB3 (np.mean of an empty list) without the RuntimeWarning
            self.logger.record("train/loss", np.nan)

    def learn(
        self: SelfBaseDQN,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfBaseDQN:
        """
        Train the model, as :meth:`stable_baselines3.DQN.learn`.

        :param tb_log_name: Name of the TensorBoard run; defaults to the class name
            (``"DoubleDQN"``, ``"DuelingDQN"``, ...), as SB3 names DQN's runs ``"DQN"``.
        """
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=type(self).__name__ if tb_log_name is None else tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
