"""The optimizer step inside the backward pass (YAML ``optimizer_in_backward``, opt-in).

SpeechBrain's training step keeps every trained parameter's gradient until the whole backward
pass is done, then steps one optimizer over all of them. At the paper size the L-MAC decoder
has 236 M parameters, so the gradients alone hold about 0.95 GB at the peak. With
``optimizer_in_backward: True`` each parameter gets its own optimizer (``opt_class([p])``),
stepped by a post-accumulate-grad hook (:meth:`torch.Tensor.register_post_accumulate_grad_hook`)
as soon as that parameter's gradient exists, which is then freed (``zero_grad(set_to_none=True)``)
(PyTorch's tutorial "How to save memory by fusing the optimizer step into the backward pass").
Adam's update of one parameter depends on that parameter's gradient and state only, so the
trained result is the plain loop's, without gradient clipping, up to float rounding (bit for
bit in the tests). The saving is bounded by the largest gradient, which still exists whole for
a moment: ``convt3.weight`` holds 117 M of the paper-size decoder's 236 M parameters, so the
peak drops by at most about 0.48 GB there, unless the layer hands the gradient over in row
chunks: a parameter of at least ``chunk_bytes`` (32 MiB by default) stepped by a plain
:class:`torch.optim.Adam` / ``AdamW`` gets a :class:`RowStepper` (``param.row_stepper``), and
a layer that can compute its weight gradient rows by rows (the decoder's one-product
transposed convolutions, ``convt1`` .. ``convt3``: 0.65 of its 0.88 GiB of parameters) steps
each chunk of rows as soon as it is computed, on views of the parameter and of Adam's
moments, so the whole gradient never exists. Adam is elementwise, so this is the same update
(the chunked products round differently, nothing else); the optimizer's state keeps its
format, so checkpoints do not change.

What the plain step does, and what happens to it here:

* global gradient-norm clipping (``max_grad_norm``, SpeechBrain's default 5) needs every
  gradient before any step: refused, the run must pass ``--max_grad_norm 0``;
* gradient accumulation (``grad_accumulation_factor`` > 1) needs gradients kept over
  batches: refused;
* the fp16 GradScaler (unscaling, skipping steps on overflow) needs every gradient: refused
  (bf16 autocast, which needs no scaler, and fp32 work);
* ``skip_nonfinite_grads``: as ``check_gradients``, a non-finite gradient is dropped and its
  parameter not stepped (per parameter, as there);
* ``remove_vector_weight_decay`` (two parameter groups) and a ``freeze_optimizers`` override:
  refused; parameters with ``requires_grad=False`` get no hook and never step, as in Adam;
* LR schedulers: :attr:`OptimizerInBackward.param_groups` are the per-parameter optimizers'
  own groups, so ``lr_annealing`` / ``update_learning_rate`` change every one of them;
* DDP: refused (DDP all-reduces the gradients after the hooks would have stepped).

Checkpoints: :class:`OptimizerInBackward` saves one state dict in the format of a single
optimizer over the same parameters (the plain loop's ``optimizer.ckpt``) and loads either, so
a run can be resumed with the other setting.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import contextlib
import logging

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from torch.optim.adam import adam
from torch.optim.optimizer import _get_scalar_dtype

from audio_interpretability.distributed import is_distributed

logger = logging.getLogger(__name__)

__all__ = ["OptimizerInBackward", "OptimizerInBackwardMixin", "RowStepper"]

#: Parameters of at least this many bytes get a :class:`RowStepper`, and a chunk of rows holds
#: about this many bytes of gradient (``convt3.weight``, 0.44 GiB: 15 chunks).
CHUNK_BYTES = 32 << 20


@register_checkpoint_hooks
class OptimizerInBackward:
    """One optimizer per parameter, each stepped by a hook as its gradient is accumulated.

    The hooks step only inside :meth:`stepping` (the training step's backward); any other
    backward pass accumulates gradients as usual.

    Arguments
    ---------
    opt_class : callable
        Builds an optimizer from a list of parameters (the YAML's ``opt_class``).
    params : iterable of torch.nn.Parameter
        The parameters, in the order of the single optimizer this replaces.
    skip_nonfinite_grads : bool
        Drop a non-finite gradient instead of stepping its parameter.
    chunk_bytes : int, optional
        Parameters of at least this size get a :class:`RowStepper` stepping chunks of about
        this size (default :data:`CHUNK_BYTES`, read when called; 0: none).

    Example
    -------
    >>> layer = torch.nn.Linear(2, 1)
    >>> opt = OptimizerInBackward(lambda p: torch.optim.SGD(p, lr=0.1), layer.parameters())
    >>> with opt.stepping():
    ...     layer(torch.ones(1, 2)).sum().backward()
    >>> layer.weight.grad is None  # stepped and freed inside the backward pass
    True
    >>> opt.remove()
    """

    def __init__(
        self,
        opt_class,
        params,
        skip_nonfinite_grads: bool = False,
        chunk_bytes: int | None = None,
    ):
        self.params = list(params)
        self.optimizers = [opt_class([p]) for p in self.params]
        self.skip_nonfinite_grads = bool(skip_nonfinite_grads)
        self.active = False
        self._handles = [
            p.register_post_accumulate_grad_hook(self._make_hook(opt))
            for p, opt in zip(self.params, self.optimizers)
            if p.requires_grad
        ]
        # row steppers: not with skip_nonfinite_grads (a whole gradient must be checked first)
        chunk_bytes = CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
        self.steppers = []
        if chunk_bytes and not self.skip_nonfinite_grads:
            for p, opt in zip(self.params, self.optimizers):
                nbytes = p.numel() * p.element_size()
                if p.requires_grad and p.dim() >= 2 and nbytes >= chunk_bytes:
                    if RowStepper.supports(opt):
                        p.row_stepper = RowStepper(self, opt, p, chunk_bytes)
                        self.steppers.append(p.row_stepper)

    def _make_hook(self, optimizer):
        def hook(param: torch.Tensor) -> None:
            if not self.active:
                return
            if self.skip_nonfinite_grads and not torch.isfinite(param.grad).all():
                param.grad = None
                logger.warning("A gradient contains NaN or Inf: its parameter is not stepped")
                return
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return hook

    @contextlib.contextmanager
    def stepping(self):
        """Step (and free) each gradient as the backward pass produces it."""
        for stepper in self.steppers:
            stepper.stepped = False
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def remove(self) -> None:
        """Remove the hooks and row steppers (the parameters train no more through this)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for stepper in self.steppers:
            if getattr(stepper.param, "row_stepper", None) is stepper:
                del stepper.param.row_stepper
        self.steppers = []

    @property
    def param_groups(self) -> list:
        """Every per-parameter optimizer's groups (an LR scheduler changes them all)."""
        return [group for opt in self.optimizers for group in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As :meth:`torch.optim.Optimizer.zero_grad`, for every parameter."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """Step on the gradients accumulated outside :meth:`stepping` (if any), then free them."""
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The state dict of one optimizer over the same parameters (the plain loop's)."""
        state, group = {}, None
        for i, opt in enumerate(self.optimizers):
            own = opt.state_dict()
            if 0 in own["state"]:
                state[i] = own["state"][0]
            group = group or own["param_groups"][0]
        group = {**(group or {}), "params": list(range(len(self.optimizers)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load :meth:`state_dict`'s format (also a plain loop's ``optimizer.ckpt``)."""
        groups = state_dict.get("param_groups", [])
        n = len(self.optimizers)
        if len(groups) != 1 or len(groups[0]["params"]) != n:
            sizes = [len(g["params"]) for g in groups]
            raise ValueError(
                f"the optimizer checkpoint has parameter groups of sizes {sizes}; "
                f"optimizer_in_backward needs one group of {n} parameters (the same decoder, "
                "remove_vector_weight_decay False)"
            )
        group = groups[0]
        states = state_dict.get("state", {})
        for index, opt in zip(group["params"], self.optimizers):
            own = {"state": {}, "param_groups": [{**group, "params": [0]}]}
            if index in states:
                own["state"][0] = states[index]
            opt.load_state_dict(own)

    @mark_as_saver
    def _save(self, path) -> None:
        torch.save(self.state_dict(), path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True) -> None:
        device = self.params[0].device if self.params else "cpu"
        self.load_state_dict(torch.load(path, map_location=device, weights_only=True))


class RowStepper:
    """Adam's step of one parameter, chunk of rows by chunk of rows, inside the backward pass.

    A layer that finds ``weight.row_stepper`` (set by :class:`OptimizerInBackward` on large
    parameters) and :attr:`active` calls :meth:`step_rows` with the gradient of each chunk of
    rows (dim 0) of :meth:`chunks`, then :meth:`finish`, and returns no gradient for the
    weight. Each chunk goes through ``torch.optim.adam.adam`` with the parameter's group
    settings, on views of the parameter and of the optimizer's ``exp_avg`` / ``exp_avg_sq``
    (created as ``Adam`` creates them); the step count advances once, in :meth:`finish`.
    Elementwise, so the result is the whole-tensor step's.

    Example
    -------
    >>> w = torch.nn.Parameter(torch.ones(4, 3))
    >>> opt = OptimizerInBackward(lambda p: torch.optim.Adam(p, lr=0.1), [w], chunk_bytes=16)
    >>> stepper = w.row_stepper
    >>> stepper.chunks(4)  # 16 bytes: one row (12 bytes) per chunk at least
    [(0, 1), (1, 2), (2, 3), (3, 4)]
    >>> with opt.stepping():
    ...     for start, stop in stepper.chunks(4):
    ...         stepper.step_rows(start, stop, torch.ones(stop - start, 3))
    ...     stepper.finish()
    >>> w.detach()[0], opt.optimizers[0].state[w]["step"]
    (tensor([0.9000, 0.9000, 0.9000]), tensor(1.))
    >>> opt.remove()
    """

    def __init__(self, owner: OptimizerInBackward, optimizer, param, chunk_bytes: int):
        self.owner = owner
        self.optimizer = optimizer
        self.param = param
        row_bytes = max(1, param[0].numel() * param.element_size())
        self.rows_per_chunk = max(1, int(chunk_bytes) // row_bytes)
        self.stepped = False

    @staticmethod
    def supports(optimizer) -> bool:
        """A single-group Adam / AdamW (fused or not; not capturable or differentiable)."""
        if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
            return False
        group = optimizer.param_groups[0]
        return len(optimizer.param_groups) == 1 and not any(
            group.get(key) for key in ("capturable", "differentiable")
        )

    @property
    def active(self) -> bool:
        """True inside :meth:`OptimizerInBackward.stepping` (else: return the whole gradient)."""
        return self.owner.active

    def chunks(self, n_rows: int) -> list:
        """``(start, stop)`` of each chunk of rows, in order, covering ``range(n_rows)``."""
        size = self.rows_per_chunk
        return [(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]

    def _state(self) -> dict:
        state = self.optimizer.state[self.param]
        if not state:  # as Adam._init_group creates it
            group = self.optimizer.param_groups[0]
            if group["fused"]:
                state["step"] = torch.zeros(
                    (), dtype=_get_scalar_dtype(is_fused=True), device=self.param.device
                )
            else:
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
            state["exp_avg"] = torch.zeros_like(self.param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(self.param, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(
                    self.param, memory_format=torch.preserve_format
                )
        return state

    def step_rows(self, start: int, stop: int, grad: torch.Tensor) -> None:
        """Step rows ``start:stop`` of the parameter with their gradient ``grad``."""
        if self.stepped:
            raise RuntimeError(
                "optimizer_in_backward: a layer stepped this parameter's rows twice in one "
                "backward pass (the weight is used by two forward calls); its gradients must be "
                "summed before Adam's step: set optimizer_in_backward: False"
            )
        state = self._state()
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        amsgrad = group["amsgrad"]
        adam(
            [self.param.detach()[start:stop]],
            [grad],
            [state["exp_avg"][start:stop]],
            [state["exp_avg_sq"][start:stop]],
            [state["max_exp_avg_sq"][start:stop]] if amsgrad else [],
            [state["step"].clone()],  # advanced once, in finish()
            foreach=group["foreach"],
            fused=group["fused"],
            has_complex=torch.is_complex(self.param),
            decoupled_weight_decay=group.get("decoupled_weight_decay", False),
            amsgrad=amsgrad,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )

    def finish(self) -> None:
        """Every chunk stepped: advance the step count (once per backward pass)."""
        self._state()["step"] += 1
        self.stepped = True


class OptimizerInBackwardMixin:
    """Brain side of ``optimizer_in_backward`` (YAML key, default False: SpeechBrain's loop).

    :meth:`check_optimizer_in_backward` refuses, before any training, the run options the
    per-parameter step cannot honour (see the module docstring); :meth:`init_optimizers`
    builds :class:`OptimizerInBackward` as ``self.optimizer`` (registered with the
    checkpointer as ``optimizer``, as SpeechBrain's); :meth:`fit_batch` runs the backward pass
    inside :meth:`OptimizerInBackward.stepping`.
    """

    @property
    def optimizer_in_backward(self) -> bool:
        """The YAML key ``optimizer_in_backward`` (absent: False)."""
        hparams = vars(self.hparams)
        return bool(hparams.get("optimizer_in_backward", False))

    def check_optimizer_in_backward(self) -> None:
        """With ``optimizer_in_backward: True``, refuse what it cannot do (ValueError)."""
        if not self.optimizer_in_backward:
            return
        what = "optimizer_in_backward: True steps each parameter as soon as its gradient exists"
        if self.max_grad_norm is not None and float(self.max_grad_norm) > 0:
            raise ValueError(
                f"{what}, so global gradient-norm clipping (max_grad_norm "
                f"{self.max_grad_norm}) cannot be done; pass --max_grad_norm 0 (no clipping) "
                "or --optimizer_in_backward False"
            )
        if int(self.grad_accumulation_factor) != 1:
            raise ValueError(
                f"{what}: it cannot accumulate gradients over batches (grad_accumulation_factor "
                f"{self.grad_accumulation_factor}); pass --grad_accumulation_factor 1 or "
                "--optimizer_in_backward False"
            )
        if self.scaler.is_enabled():
            raise ValueError(
                f"{what}: the fp16 GradScaler needs every gradient before a step (precision "
                f"{self.precision}); pass --precision bf16 or fp32, or --optimizer_in_backward "
                "False"
            )
        if self.remove_vector_weight_decay:
            raise ValueError(
                f"{what}: remove_vector_weight_decay (two parameter groups) is not supported; "
                "pass --remove_vector_weight_decay False or --optimizer_in_backward False"
            )
        if type(self).freeze_optimizers is not sb.Brain.freeze_optimizers:
            raise ValueError(
                f"{what}: {type(self).__name__} overrides freeze_optimizers, which it cannot "
                "honour; set optimizer_in_backward: False"
            )
        if is_distributed():
            raise ValueError(
                f"{what}, before DDP has averaged the gradients over the processes: it does not "
                "work under torchrun; pass --optimizer_in_backward False"
            )
        if self.opt_class is None:
            raise ValueError("optimizer_in_backward: True needs an opt_class")

    def init_optimizers(self):
        """SpeechBrain's, or one optimizer per parameter with ``optimizer_in_backward``."""
        if not self.optimizer_in_backward:
            return super().init_optimizers()
        self.check_optimizer_in_backward()
        old = getattr(self, "optimizer", None)
        if isinstance(old, OptimizerInBackward):
            old.remove()  # fit() called again: no second set of hooks
        self.optimizer = OptimizerInBackward(
            self.opt_class, self.modules.parameters(), self.skip_nonfinite_grads
        )
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
        logger.info(
            "optimizer_in_backward: %d per-parameter optimizers stepped in the backward pass",
            len(self.optimizer.optimizers),
        )

    def fit_batch(self, batch):
        """SpeechBrain's, or forward + backward with the parameters stepped inside it."""
        if not self.optimizer_in_backward:
            return super().fit_batch(batch)
        self.on_fit_batch_start(batch, True)
        with self.training_ctx:
            outputs = self.compute_forward(batch, sb.Stage.TRAIN)
            loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
        self.check_loss_isfinite(loss)
        with self.optimizer.stepping():
            loss.backward()
        self.optimizer_step += 1
        self.on_fit_batch_end(batch, outputs, loss, True)
        return loss.detach().cpu()
