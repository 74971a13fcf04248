"""The anchor bank as one shared LoRA basis: a batch of different users in one forward pass
(pure tensor math in plain torch, no custom kernels; peft stays the export format).

Every user's fused adapter (merge `cat`, exact) is ΔW_u = Σ_i w_ui s_i B_i A_i, plus their stacked
LoRA s_u B_u A_u. Stack the bank once per module: A = [A_1; …; A_K] (K·r × d_in) and
B = [s_1 B_1, …, s_K B_K] (d_out × K·r). For a batch whose row b has anchor weights w_b (zero for
anchors the user did not choose), expanded over each anchor's rank into c_b (K·r):

    y_b = W x_b + B (c_b ⊙ (A x_b)) + s_b B_b (A_b x_b)

one product with A, a per-row scale, one product with B for every user of the batch at once. Each
row's stack joins the basis as columns of its own, scaled by 1 on its row and 0 on the others, so
the same three operations apply it (no per-row `bmm`: at one token per decoding step the cost is
the number of operations, not their size). When only some anchors are chosen by the batch's rows,
only their columns are gathered.

A request carries its `RowAdapter` (weights and stack tensors, immutable, named by a content hash)
into the batch: nothing a waiting request needs lives in a slot another user can overwrite.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from dataclasses import dataclass

import torch

PREFIX = "base_model.model."  # peft's key prefix: the module path in the plain base model follows it


@dataclass(frozen=True)
class RowAdapter:
    """One user's adapter as the shared basis needs it: a weight per bank anchor (zero where not
    chosen) and, per module, the stacked LoRA's A (r × d_in) and scaled B (d_out × r), or None for
    a user without a stack. Tensors are private copies marked read-only by convention."""

    weights: torch.Tensor  # (K,)
    stack: dict[str, tuple[torch.Tensor, torch.Tensor]] | None
    content_hash: str

    @staticmethod
    def make(weights: torch.Tensor, stack: dict | None) -> RowAdapter:
        w = weights.detach().to(torch.float32).clone()
        st = None
        if stack:
            st = {m: (a.detach().float().clone(), b.detach().float().clone()) for m, (a, b) in stack.items()}
        h = hashlib.sha256(w.numpy().tobytes())
        for m in sorted(st or {}):
            h.update(m.encode() + st[m][0].numpy().tobytes() + st[m][1].numpy().tobytes())
        return RowAdapter(w, st, h.hexdigest()[:16])


class SharedBasis:
    """Hooks on a plain base model's target linear layers that add the bank's shared-basis update
    for the rows of the current batch (`with basis.rows([...])`); outside that context, or for a
    row given as None, the model is the base model."""

    def __init__(self, model: torch.nn.Module, anchors: list[dict[str, torch.Tensor]], scales: list[float]):
        self.model = model
        self.k = len(anchors)
        self.r = [int(next(v for k, v in a.items() if k.endswith(".lora_A.weight")).shape[0]) for a in anchors]
        self.cols = torch.repeat_interleave(torch.arange(self.k), torch.tensor(self.r))  # column -> anchor
        mods = sorted({k[: -len(".lora_A.weight")] for k in anchors[0] if k.endswith(".lora_A.weight")})
        self.At: dict[str, torch.Tensor] = {}  # A transposed (d_in, K·r), as the forward multiplies by it
        self.Bt: dict[str, torch.Tensor] = {}  # B transposed (K·r, d_out)
        named = dict(model.named_modules())
        self.modules: dict[str, str] = {}  # base module path -> bank key
        dtype = self.dtype = next(model.parameters()).dtype  # per-batch tensors follow the model's
        for key in mods:
            path = key[len(PREFIX) :] if key.startswith(PREFIX) else key
            if path not in named:
                raise KeyError(f"bank module {key!r} is not a module of the base model")
            self.At[path] = torch.cat([a[f"{key}.lora_A.weight"].to(dtype) for a in anchors], 0).T.contiguous()
            self.Bt[path] = torch.cat(
                [s * a[f"{key}.lora_B.weight"].to(dtype) for a, s in zip(anchors, scales)], 1
            ).T.contiguous()
            self.modules[path] = key
        self._ctx = threading.local()
        self._hooks = [named[p].register_forward_hook(self._hook(p)) for p in self.modules]

    def close(self) -> None:
        for h in self._hooks:
            h.remove()

    @contextlib.contextmanager
    def rows(self, rows: list[RowAdapter | None]):
        """The per-row tensors of one batch, fixed for every forward pass inside the context."""
        b = len(rows)
        coef = torch.zeros(b, self.k)
        for i, r in enumerate(rows):
            if r is not None:
                coef[i] = r.weights
        used = torch.nonzero(coef.abs().sum(0) > 0).flatten()  # anchors some row chose
        cols = torch.nonzero(torch.isin(self.cols, used)).flatten()
        c_bank = coef[:, self.cols[cols]]  # (batch, used columns): each row's weight over its anchors' ranks
        ctx = {"ab": {}}
        gather = len(cols) < len(self.cols)  # every anchor in use: no gather
        for path in self.modules:
            # The chosen anchors' columns, gathered once per batch, not per call; each row's stack joins
            # them as columns of its own (coefficient 1 on its row, 0 on the others), so one product
            # with A, one scale and one product with B serve anchors and stacks alike (exact).
            At, Bt = self.At[path], self.Bt[path]
            if gather:
                At, Bt = At[:, cols], Bt[cols]
            As, Bs, cs = [At], [Bt], [c_bank]
            for i, r in enumerate(rows):
                m = (r.stack or {}).get(self.modules[path]) if r is not None else None
                if m is not None:
                    As.append(m[0].T.to(self.dtype))
                    Bs.append(m[1].T.to(self.dtype))
                    one = torch.zeros(b, m[0].shape[0])
                    one[i] = 1.0
                    cs.append(one)
            if len(As) > 1:  # no stack in the batch and every anchor in use: the bank's own tensors, no copy
                At, Bt = torch.cat(As, 1).contiguous(), torch.cat(Bs, 0).contiguous()
            ctx["ab"][path] = (At, Bt, torch.cat(cs, 1)[:, None, :].to(self.dtype))
        prev = getattr(self._ctx, "v", None)
        self._ctx.v = ctx
        try:
            yield
        finally:
            self._ctx.v = prev

    def _hook(self, path: str):
        def hook(module, inputs, output):
            ctx = getattr(self._ctx, "v", None)
            if ctx is None:
                return output
            x = inputs[0]  # (batch, tokens, d_in)
            At, Bt, c = ctx["ab"][path]  # (d_in, columns), (columns, d_out), (batch, 1, columns)
            if At.shape[1]:
                output = output + ((x @ At) * c) @ Bt
            return output

        return hook


def row_from_record(bank_ids: list[str], anchors: list[str], weights: list[float], stack: dict, scale: float):
    """A RowAdapter from a per-user record's choice (anchor ids and weights) and its stack (peft
    keys, rank r, `scale` = alpha / r folded into B)."""
    pos = {a: i for i, a in enumerate(bank_ids)}
    missing = [a for a in anchors if a not in pos]
    if missing:
        raise ValueError(f"anchors {missing[:3]} are not in this bank")
    w = torch.zeros(len(bank_ids))
    for a, x in zip(anchors, weights):
        w[pos[a]] = float(x)
    st = None
    if stack:
        mods = sorted(k[: -len(".lora_A.weight")] for k in stack if k.endswith(".lora_A.weight"))
        st = {m: (stack[f"{m}.lora_A.weight"], scale * stack[f"{m}.lora_B.weight"]) for m in mods}
    return RowAdapter.make(w, st)
