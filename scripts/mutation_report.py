"""The kill rate of a `mutmut run` over the named functions, from mutmut's results in mutants/.

    python scripts/mutation_report.py --min 90 'pipeline.images.x_to_gray*' ...

Counts every mutant whose name matches a glob (as `mutmut run` selects them): killed (a test
failed, or the tests timed out) over all of them; a mutant no test reached, or that survived,
counts against the rate. Survivors are listed, each with its reason when EQUIVALENT holds it
(README, Mutation testing): any other survivor is a test to write. Exits 1 below --min percent.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

# Mutants that cannot change behaviour, so no test can kill them: name → why. Keys are mutmut's
# names (function, then the mutant's number in it); the numbers hold while the function's source
# does not change. Keep this in step with README (Mutation testing).
_CLIP = "BT.601 weights are positive and sum to 1 (0.9999999999999999), so luma stays in [0, 255]: the clip never acts"
_FLOAT = "the F-mode pixels in float32 instead of float64: same 8-bit result for every float32 input (checked exhaustively)"
_DEFAULT = "numpy's astype(None) is float64"
EQUIVALENT: dict[str, str] = {
    "pipeline.images.x__to_8bit__mutmut_26": _FLOAT,  # np.asarray(img, dtype=None)
    "pipeline.images.x__to_8bit__mutmut_28": _FLOAT,  # np.asarray(img)
    "pipeline.images.x_to_gray__mutmut_6": _CLIP,  # clip(None, 255)
    "pipeline.images.x_to_gray__mutmut_7": _CLIP,  # clip(0, None)
    "pipeline.images.x_to_gray__mutmut_9": _CLIP,  # clip(0)
    "pipeline.images.x_to_gray__mutmut_12": _CLIP,  # clip(0, 256)
    "pipeline.ingest.x_parse_split__mutmut_6": "rpartition: an item with two '=' fails either way (bad fraction or "
                                               "bad name), with the same message",
    "pipeline.ingest.x_parse_split__mutmut_12": "-2.0 for an unreadable fraction: out of (0, 1] like -1.0",
    "pipeline.ingest.x_parse_split__mutmut_32": ">= 1e-6: sum-1 is a multiple of 2^-53 near 1 and the double 1e-6 "
                                                "is not, so it never equals 1e-6",
    "pipeline.ingest.x_split_of__mutmut_6": "int.from_bytes defaults to 'big' on Python 3.11+, the stacks' Python",
    "pipeline.ingest.x_split_of__mutmut_21": "u <= acc: needs a key whose 64-bit BLAKE2b prefix equals a split "
                                             "boundary exactly (a hash preimage)",
    "pipeline.io.x_check_writable__mutmut_15": "the `or '.'` fallback is unreachable: dirname(abspath(x)) is never empty",
    "pipeline.io.x_local_path__mutmut_2": "the substitution is anchored on ^file:, so it leaves other paths alone anyway",
    "pipeline.metrics.x_rgb_to_y__mutmut_3": _DEFAULT,
    "pipeline.metrics.x__y_cropped__mutmut_11": _DEFAULT,
    "pipeline.metrics.x_psnr_y__mutmut_19": "float('INF') is float('inf')",
    "pipeline.metrics.x_ssim_y__mutmut_8": "use_sample_covariance=None: scikit-image only tests its truth, as False",
    "pipeline.metrics.x_ssim_y__mutmut_13": "sigma left out: scikit-image's default is 1.5",
}

KILLED = {"killed", "timeout", "caught by type check"}


def status_of(exit_code: int | None) -> str:
    from mutmut.stats import status_by_exit_code  # mutmut's own reading of a mutant's exit code

    return status_by_exit_code[exit_code]


def load(root: Path) -> dict[str, int | None]:
    results: dict[str, int | None] = {}
    for meta in sorted(root.glob("**/*.py.meta")):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("globs", nargs="+", help="mutant names as `mutmut run` takes them")
    parser.add_argument("--min", type=float, default=90.0, help="lowest kill rate that passes, in percent")
    parser.add_argument("--mutants", default="mutants", help="mutmut's folder")
    args = parser.parse_args(argv)

    results = load(Path(args.mutants))
    chosen = {k: v for k, v in results.items() if any(fnmatch.fnmatch(k, g) for g in args.globs)}
    if not chosen:
        print(f"mutation: no mutant in {args.mutants}/ matches {' '.join(args.globs)}; run `mutmut run` first")
        return 1
    status = {k: status_of(v) for k, v in chosen.items()}
    counts = Counter(status.values())
    killed = sum(counts[s] for s in KILLED)
    rate = 100.0 * killed / len(chosen)

    by_function = Counter(k.rsplit("__mutmut_", 1)[0] for k, s in status.items() if s not in KILLED)
    missed = sorted(k for k, s in status.items() if s not in KILLED)
    for name in missed:
        why = EQUIVALENT.get(name)
        print(f"  {status[name]:<9} {name}" + (f"  (equivalent: {why})" if why else ""))
    if by_function:
        print("not killed, by function: " + ", ".join(f"{f.split('.', 1)[1]} {n}" for f, n in by_function.most_common()))
    unexplained = [k for k in missed if k not in EQUIVALENT]
    print(f"mutation: {killed}/{len(chosen)} mutants killed ({rate:.1f} %, minimum {args.min:g} %); "
          f"{len(missed) - len(unexplained)} equivalent, {len(unexplained)} other survivors; "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if unexplained:
        print("mutation: survivors that are not known equivalents want a test (tests/test_<module>.py)")
    return 0 if rate >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
