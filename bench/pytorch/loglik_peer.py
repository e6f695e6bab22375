#!/usr/bin/env python3
"""PyTorch peer of ResLora's log-likelihood scoring (bench/loglik-check.sh; never used by the build or the tests).

Reads the JSON that `LoglikelihoodBench.WriteCheck` wrote (each request's context ids, continuation ids and our summed
log-likelihoods, shared-context and naive) and the model folder, and recomputes every request independently with plain
torch, as lm-evaluation-harness's HFLM does: the input is (context + continuation)[-(max_length + 1):][:-1], one
unpadded forward per request, float32 log-softmax of the last len(continuation) positions, the continuation's
log-probabilities summed, is_greedy when every continuation token is the arg-max. The forward is peer.py's LLaMA/Qwen2
written from the specs (no adapter). Prints the largest differences as JSON and exits 1 when one exceeds --tol.
"""
import argparse, json, os, sys
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer import Cfg, Llama, read_model_weights  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--scores", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = Cfg(json.load(open(os.path.join(a.model, "config.json"))))
    model = Llama(cfg, read_model_weights(a.model, torch.float32), None, torch.float32)
    spec = json.load(open(a.scores))
    max_length = spec["max_length"]
    worst = {"shared": 0.0, "naive": 0.0}
    greedy_mismatch = 0
    truncated = 0
    with torch.no_grad():
        for r in spec["requests"]:
            ctx, cont = r["context"], r["continuation"]
            whole = (ctx + cont)[-(max_length + 1):]
            truncated += len(ctx) + len(cont) > max_length + 1
            inp = torch.tensor(whole[:-1], dtype=torch.long)[None]
            logits = model(inp, torch.ones_like(inp))[0]
            logp = F.log_softmax(logits[-len(cont):].float(), dim=-1)
            target = torch.tensor(cont, dtype=torch.long)
            ll = logp.gather(1, target[:, None]).squeeze(1).sum().item()
            greedy = bool((logp.argmax(-1) == target).all())
            for k in worst:
                worst[k] = max(worst[k], abs(ll - r[k]))
            greedy_mismatch += greedy != r["is_greedy"]
    ok = max(worst.values()) <= a.tol and greedy_mismatch == 0
    print(json.dumps({"requests": len(spec["requests"]), "truncated": truncated, "max_abs_diff_shared": worst["shared"],
                      "max_abs_diff_naive": worst["naive"], "greedy_mismatches": greedy_mismatch, "tol": a.tol, "ok": ok,
                      "torch": torch.__version__}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
