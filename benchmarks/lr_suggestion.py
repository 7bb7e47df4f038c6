"""The LR range test's suggestion for the default GPT, checked by training at it, 10x higher
and 10x lower: final validation loss of each. Prints a JSON report.

    python benchmarks/lr_suggestion.py [--steps 2000] [--data builtin shakespeare-file ...]
"""

import argparse
import json
import time

import lmwidget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps of each training run")
    parser.add_argument("--data", nargs="+", default=["builtin", "shakespeare"])
    args = parser.parse_args()
    report = []
    for data in args.data:
        t0 = time.perf_counter()
        finder = lmwidget.lr_find(data=data, display=False)
        finder.wait()
        entry = {"data": data, "finder_steps": len(finder.lrs), "finder_state": finder.state,
                 "finder_seconds": round(time.perf_counter() - t0, 1),
                 "suggestions": finder.suggestions, "runs": []}
        for factor in (0.1, 1.0, 10.0):
            lr = finder.suggestion * factor
            run = lmwidget.train(data=data, lr=lr, max_steps=args.steps, display=False)
            run.wait()
            val = run.history.dropna(subset=["val_loss"])
            entry["runs"].append({"lr": lr, "factor": factor, "state": run.state,
                                  "final_val_loss": float(val.val_loss.iloc[-1]),
                                  "best_val_loss": float(val.val_loss.min())})
        report.append(entry)
        print(json.dumps(entry), flush=True)


if __name__ == "__main__":
    main()
