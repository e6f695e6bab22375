#!/usr/bin/env python3
"""PrecLoRA's Riemannian preconditioner and a LoRA+ AdamW step, recomputed with PyTorch from the formulas that PEFT
states (peft/optimizers/riemannian.py, PR #3382; peft/optimizers/loraplus.py), on the tensors ResLora wrote.

  grad_A <- pinv(B^T B + reg I_r) @ grad_A        A = lora_A (r, in)
  grad_B <- grad_B @ pinv(A A^T + reg I_r)        B = lora_B (out, r)

PEFT computes in at least float32; this peer does it in float64 (the reference) and in float32 (PEFT's dtype for float32
factors, reported only). Then one torch.optim.AdamW step over two LoRA+ groups (A at lr, B at ratio * lr, both with
weight decay) on the preconditioned gradients. Exit 0 when every |ResLora - peer| <= tol * max(1, |peer|).

Usage: precondition_peer.py --case CASE.json [--tol 1e-6]
"""
import argparse
import json
import sys

import torch


def damped_pinv(mat, reg):
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype)
    return torch.linalg.pinv(mat + reg * eye)


def precondition(a, b, ga, gb, reg):
    new_ga = damped_pinv(b.T @ b, reg) @ ga
    new_gb = gb @ damped_pinv(a @ a.T, reg)
    return new_ga, new_gb


def worst(ours, ref):
    ours = torch.tensor(ours, dtype=torch.float64)
    return float(((ours - ref).abs() / ref.abs().clamp(min=1.0)).max())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--case", required=True)
    p.add_argument("--tol", type=float, default=1e-6)
    args = p.parse_args()
    with open(args.case) as f:
        case = json.load(f)
    reg = case["delta"]
    rows = []
    for c in case["cases"]:
        t = {k: torch.tensor(c[k], dtype=torch.float64) for k in ("a", "b", "grad_a", "grad_b")}
        ref_a, ref_b = precondition(t["a"], t["b"], t["grad_a"], t["grad_b"], reg)
        f32 = precondition(*(t[k].float() for k in ("a", "b", "grad_a", "grad_b")), reg)
        rows.append((c["name"] + " grad_A", worst(c["ours_grad_a"], ref_a), worst(c["ours_grad_a"], f32[0].double())))
        rows.append((c["name"] + " grad_B", worst(c["ours_grad_b"], ref_b), worst(c["ours_grad_b"], f32[1].double())))

    s = case["adamw_step"]
    a = torch.nn.Parameter(torch.tensor(s["a"], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor(s["b"], dtype=torch.float64))
    ga, gb = precondition(a.detach(), b.detach(), torch.tensor(s["grad_a"], dtype=torch.float64),
                          torch.tensor(s["grad_b"], dtype=torch.float64), reg)
    a.grad, b.grad = ga, gb
    opt = torch.optim.AdamW([
        {"params": [a], "lr": s["lr"], "weight_decay": s["weight_decay"]},
        {"params": [b], "lr": s["lr"] * s["ratio"], "weight_decay": s["weight_decay"]},
    ], lr=s["lr"], betas=(0.9, 0.999), eps=1e-8)
    opt.step()
    rows.append(("AdamW+LoRA+ step A", worst(s["ours_a"], a.detach()), float("nan")))
    rows.append(("AdamW+LoRA+ step B", worst(s["ours_b"], b.detach()), float("nan")))

    print(f"torch {torch.__version__}; delta {reg}; tolerance {args.tol} (relative to max(1, |peer|))")
    print(f"{'tensor':<28} {'vs float64 peer':>16} {'vs PEFT float32':>16}")
    bad = 0
    for name, d64, d32 in rows:
        ok = d64 <= args.tol
        bad += not ok
        print(f"{name:<28} {d64:>16.3e} {d32:>16.3e} {'ok' if ok else 'FAIL'}")
    if bad:
        print(f"{bad} tensor(s) differ by more than {args.tol}", file=sys.stderr)
        return 1
    print("all within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
