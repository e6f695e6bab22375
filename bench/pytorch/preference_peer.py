#!/usr/bin/env python3
"""PyTorch peer of ResLora's preference losses (bench/preference-check.sh; never used by the build or the tests).

Reads the JSON that PreferenceLossesTests.PeerCase_MatchesScalarFormulas_AndIsWrittenForThePyTorchPeer wrote (fixed
random per-pair log-probabilities, a small logits/labels batch, and ResLora's float32 results) and recomputes each
loss in float64 straight from the papers:
  DPO  (Rafailov et al. 2023, eq. 7):   -log sigmoid(beta * ((pc - pr) - (rc - rr))), conservative DPO with label
        smoothing eps: (1 - eps) * that + eps * -log sigmoid(-beta * (...)).
  IPO  (Azar et al. 2023, eq. 17):      ((pc - pr) - (rc - rr) - 1 / (2 tau))^2 on length-averaged log-probabilities.
  ORPO (Hong et al. 2024, eqs. 4-7):    L_SFT + lambda * -log sigmoid(log(odds(c) / odds(r))), odds(p) = P / (1 - P)
        with P = exp(length-averaged log-probability), L_SFT the mean of the given chosen NLLs.
  SimPO (Meng et al. 2024, eq. 6):      -log sigmoid(beta * (avg_c - avg_r) - gamma), label smoothing as for DPO.
  Sequence log-probabilities: log_softmax of logits[:, :-1], gathered at labels[:, 1:], -100 left out; sum and mean.
Prints the largest absolute differences as JSON and exits 1 when one exceeds --tol.
"""
import argparse, json, sys
import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True)
    ap.add_argument("--tol", type=float, default=1e-6)
    a = ap.parse_args()
    spec = json.load(open(a.case))
    t = lambda xs: torch.tensor(xs, dtype=torch.float64)
    i = spec["inputs"]
    pc, pr, rc, rr = t(i["policy_chosen"]), t(i["policy_rejected"]), t(i["ref_chosen"]), t(i["ref_rejected"])
    ac, ar, nll = t(i["avg_chosen"]), t(i["avg_rejected"]), t(i["chosen_nll"])
    ipo_rc, ipo_rr = t(spec["ipo_ref"]["chosen"]), t(spec["ipo_ref"]["rejected"])

    def dpo(beta, eps):
        z = beta * ((pc - pr) - (rc - rr))
        return ((1 - eps) * -F.logsigmoid(z) + eps * -F.logsigmoid(-z)).mean()

    def log_odds(logp):  # log(P / (1 - P))
        p = torch.exp(logp)
        return torch.log(p) - torch.log(1 - p)

    def simpo(beta, gamma, eps):
        z = beta * (ac - ar) - gamma
        return ((1 - eps) * -F.logsigmoid(z) + eps * -F.logsigmoid(-z)).mean()

    peer = {
        "dpo": dpo(0.1, 0.0),
        "dpo_ls": dpo(0.1, 0.1),
        "ipo": (((ac - ar) - (ipo_rc - ipo_rr) - 1 / (2 * 0.5)) ** 2).mean(),
        "orpo": nll.mean() + 0.1 * (-F.logsigmoid(log_odds(ac) - log_odds(ar))).mean(),
        "simpo": simpo(2.5, 1.4, 0.0),
        "simpo_ls": simpo(2.0, 0.5, 0.2),
    }
    diffs = {k: abs(v.item() - spec["losses"][k]) for k, v in peer.items()}

    chosen_r, rejected_r = 0.1 * (pc - rc), 0.1 * (pr - rr)
    metrics = {
        "rewards/chosen": chosen_r.mean(), "rewards/rejected": rejected_r.mean(),
        "rewards/accuracies": (chosen_r > rejected_r).double().mean(), "rewards/margins": (chosen_r - rejected_r).mean(),
        "logps/chosen": pc.mean(), "logps/rejected": pr.mean(),
    }
    for k, v in metrics.items():
        diffs["dpo_metrics " + k] = abs(v.item() - spec["dpo_metrics"][k])

    s = spec["sequence"]
    logits = t(s["logits"]).reshape(s["shape"])
    labels = torch.tensor(s["labels"], dtype=torch.long).reshape(s["shape"][:2])
    target = labels[:, 1:]
    mask = target != -100
    logp = F.log_softmax(logits[:, :-1], dim=-1).gather(2, target.clamp(min=0).unsqueeze(2)).squeeze(2)
    seq_sum = (logp * mask).sum(-1)
    seq_mean = seq_sum / mask.sum(-1)
    diffs["sequence_sum"] = (seq_sum - t(s["sum"])).abs().max().item()
    diffs["sequence_mean"] = (seq_mean - t(s["mean"])).abs().max().item()

    worst = max(diffs.values())
    ok = worst <= a.tol
    print(json.dumps({"max_abs_diff": worst, "tol": a.tol, "ok": ok, "torch": torch.__version__,
                      "diffs": {k: float(f"{v:.3g}") for k, v in diffs.items()}}, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
