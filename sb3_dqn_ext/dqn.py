"""The shared base of every algorithm in this package: SB3's DQN with one ``train()`` loop and its seams."""

import io
import pathlib
import warnings
from typing import Any, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecFrameStack, VecTransposeImage, is_vecenv_wrapped, unwrap_vec_wrapper
from torch.nn import functional as F

from sb3_dqn_ext.buffers import (
    DictPrioritizedReplayBuffer,
    DictPrioritizedReplayBufferSamples,
    MemoryEfficientReplayBuffer,
    PrioritizedReplayBuffer,
    PrioritizedReplayBufferSamples,
    _CompiledReplayBuffer,
)

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
    - :meth:`_compute_loss`: the Huber loss; with a prioritized replay buffer, the element-wise Huber loss
      weighted by the importance-sampling weights, followed by the priority update (Algorithm 1 of
      https://arxiv.org/abs/1511.05952).

    Any class of this package accepts ``replay_buffer_class=PrioritizedReplayBuffer`` (or
    ``DictPrioritizedReplayBuffer``); its ``n_steps`` and ``gamma`` are then forwarded to the buffer (SB3 ignores
    ``n_steps`` for a custom buffer class), and ``replay_buffer_kwargs`` set ``alpha``, ``beta`` and ``eps``.

    With ``optimize_memory_usage=True``, observations are stored once, and frames once when the env stacks them
    with ``VecFrameStack`` (whose ``n_stack`` is passed to the buffer): a
    :class:`~sb3_dqn_ext.buffers.MemoryEfficientReplayBuffer`, or the prioritized buffer's own frame storage. Unlike
    SB3's ``optimize_memory_usage``, it keeps every real next observation, so it works with timeouts and n-step
    returns. Where the user asks for nothing special, the buffer is SB3's own.

    Differs from SB3: ``train()`` keeps the losses on the device and reads them back once per call to
    ``train()`` instead of once per gradient step (``loss.item()``), so the loop does not wait for the
    device after every step. The parameters are unchanged by this; only the logged mean loss is computed
    in float32 on the device instead of float64 on the host. With the memory-efficient storage, calling ``learn()``
    again with ``reset_num_timesteps=True`` marks the last stored transitions truncated, where SB3 marks them
    terminated (SB3 must: its next observations are overwritten; here they are kept). ``learn()`` names TensorBoard
    runs after the class.
    """

    def _setup_model(self) -> None:
        # TD errors and importance weights of the current train() call's batches, for the logs (prioritized replay)
        self._td_error_batches: list[np.ndarray] = []
        self._is_weight_batches: list[th.Tensor] = []
        if self.optimize_memory_usage and self.replay_buffer_class is None:
            self.replay_buffer_class = MemoryEfficientReplayBuffer
        if self.replay_buffer_class is not None and issubclass(
            self.replay_buffer_class, (_CompiledReplayBuffer, DictPrioritizedReplayBuffer)
        ):
            self._configure_buffer()
            # n_steps now reaches the buffer: keep SB3 from warning that it is ignored for a custom buffer class
            n_steps, self.n_steps = self.n_steps, 1
            try:
                super()._setup_model()
            finally:
                self.n_steps = n_steps
        else:
            super()._setup_model()

    def _configure_buffer(self) -> None:
        """
        Pass ``n_steps``, ``gamma`` and, with ``optimize_memory_usage``, how ``VecFrameStack`` stacks the frames to one of
        our buffers, refusing contradictory settings.
        """
        assert self.replay_buffer_class is not None
        is_dict = isinstance(self.observation_space, spaces.Dict)
        if is_dict and self.optimize_memory_usage:
            raise ValueError(
                "optimize_memory_usage=True is not supported for Dict observations (nor by SB3's DictReplayBuffer)"
            )
        if is_dict and not issubclass(self.replay_buffer_class, DictPrioritizedReplayBuffer):
            raise ValueError(
                f"Dict observation spaces need replay_buffer_class=DictPrioritizedReplayBuffer or None, got "
                f"{self.replay_buffer_class.__name__}"
            )
        if issubclass(self.replay_buffer_class, DictPrioritizedReplayBuffer):
            if self.n_steps > 1:
                raise ValueError(
                    f"n_steps={self.n_steps}: n-step returns are not supported for Dict observations "
                    "(as in SB3's DictReplayBuffer)"
                )
            return
        # A value given in replay_buffer_kwargs must agree with the model's, except n_steps when the model keeps
        # its default of 1: SB3's documented way to configure a custom buffer is replay_buffer_kwargs alone
        for key, value in (("n_steps", self.n_steps), ("gamma", self.gamma)):
            given = self.replay_buffer_kwargs.setdefault(key, value)
            if given != value and not (key == "n_steps" and self.n_steps == 1):
                raise ValueError(
                    f"replay_buffer_kwargs[{key!r}]={given} contradicts the model's {key}={value}: set it in one place"
                )
        frame_stack = unwrap_vec_wrapper(self.env, VecFrameStack) if self.env is not None else None
        if self.optimize_memory_usage and self.env is not None and frame_stack is not None:
            stacked = frame_stack.stacked_obs
            # VecFrameStack stacks along the channel axis, first or last; SB3's VecTransposeImage moves the last first
            channels_first = stacked.channels_first or is_vecenv_wrapped(self.env, VecTransposeImage)
            self.replay_buffer_kwargs.setdefault("n_stack", stacked.n_stack)
            self.replay_buffer_kwargs.setdefault("stack_axis", 0 if channels_first else -1)

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        buffer = self.replay_buffer
        if not (isinstance(buffer, _CompiledReplayBuffer) and buffer.frames is not None):
            return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        # SB3 warns and marks the last transitions terminated (its next observations would be overwritten); they are
        # kept here: mark them truncated instead, so that no n-step return runs into the next episode
        last = (buffer.pos - 1) % buffer.buffer_size
        dones = buffer.dones[last].copy()
        result = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        if not np.array_equal(buffer.dones[last], dones):
            buffer.dones[last] = dones
            buffer.timeouts[last] = np.logical_or(buffer.timeouts[last], np.logical_not(dones))
        return result

    def _excluded_save_params(self) -> list[str]:
        # Per-call scratch lists of train(), rebuilt by _setup_model()
        return [*super()._excluded_save_params(), "_td_error_batches", "_is_weight_batches"]

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
        if not isinstance(replay_data, PrioritizedReplayBufferSamples | DictPrioritizedReplayBufferSamples):
            # Compute Huber loss (less sensitive to outliers)
            return F.smooth_l1_loss(current_q_values, target_q_values)

        # Prioritized replay (Algorithm 1, lines 11-12): the TD errors refresh the priorities, unclipped and
        # without gradient, and the importance-sampling weights scale each sample's Huber loss
        td_errors = (target_q_values - current_q_values).detach().cpu().numpy()  # (batch_size, 1)
        self.replay_buffer.update_priorities(replay_data.indices, td_errors)  # type: ignore[union-attr]
        # Logged once per train() call (see train()): keep the batches, no host sync or reduction here
        self._td_error_batches.append(td_errors)
        self._is_weight_batches.append(replay_data.weights)
        elementwise_loss = F.smooth_l1_loss(current_q_values, target_q_values, reduction="none")  # (batch_size, 1)
        return (replay_data.weights * elementwise_loss).mean()

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update learning rate according to schedule
        self._update_learning_rate(self.policy.optimizer)
        prioritized = isinstance(self.replay_buffer, PrioritizedReplayBuffer | DictPrioritizedReplayBuffer)
        if prioritized:
            # beta follows the training progress, like the learning rate and the exploration rate
            self.replay_buffer.progress_remaining = self._current_progress_remaining  # type: ignore[union-attr]
        self._td_error_batches, self._is_weight_batches = [], []

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
        if self._td_error_batches:
            # Means over the gradient steps of this call (equal batch sizes: the mean of the per-step means);
            # record_mean then averages the calls until the next dump
            self.logger.record_mean("train/td_error_mean", float(np.abs(np.concatenate(self._td_error_batches)).mean()))
            self.logger.record_mean("train/is_weight_mean", th.cat(self._is_weight_batches).mean().item())
        self._td_error_batches, self._is_weight_batches = [], []
        if prioritized:
            self.logger.record("train/beta", self.replay_buffer.beta)  # type: ignore[union-attr]
            self.logger.record("train/priority_max", self.replay_buffer.max_priority)  # type: ignore[union-attr]

    @classmethod
    def load(  # type: ignore[override]  # SB3's signature, with this class's return type
        cls: type[SelfBaseDQN],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfBaseDQN:
        """
        Load the model from a zip-file, as :meth:`stable_baselines3.DQN.load`.

        Warns when the saved model contradicts what this class assumes (a ``DuelingDQN`` loading a single-stream
        network, a ``PrioritizedDQN`` loading a model saved with a uniform replay buffer): the saved settings win, as
        in SB3, so the loaded model would silently be another algorithm.
        """
        model = super().load(
            path,
            env=env,
            device=device,
            custom_objects=custom_objects,
            print_system_info=print_system_info,
            force_reset=force_reset,
            **kwargs,
        )
        for contradiction in model._contradictions():
            warnings.warn(f"{cls.__name__}.load(): {contradiction}")
        return model

    def _contradictions(self) -> list[str]:
        """What this model's (saved) settings contradict in its class's algorithm; none here."""
        return []

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
