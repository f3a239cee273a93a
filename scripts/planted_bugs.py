"""`make planted`: plausible bugs planted by hand in the Spark- and torch-facing code, which
`make mutation` does not mutate; the suite must kill every one.

Each bug is one textual edit of one file. For each, the working tree is copied (tracked and
untracked files, no venvs), the edit applied to the copy, and the tests that guard the promise
run there (PYTHONPATH points Spark's Python workers at the copy too). A bug the tests let through
fails the target, naming it; a control run of the same tests on the unplanted copy comes first.
About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Bug:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = (
    Bug("featurizer feeds BGR to the network",
        "pipeline/featurize.py", "arr = im.to_rgb(arr) if c == 3 else im.to_gray(arr)",
        "arr = im.to_rgb(arr)[:, :, ::-1] if c == 3 else im.to_gray(arr)",
        ("tests/test_featurize.py::test_spark_features_equal_plain_keras_predict",)),
    Bug("featurizer skips the resize's interpolation (nearest pixels)",
        "pipeline/images.py", "resize((size[1], size[0]), Image.Resampling.BILINEAR)",
        "resize((size[1], size[0]), Image.Resampling.NEAREST)",
        ("tests/test_featurize.py::test_spark_features_equal_plain_keras_predict",)),
    Bug("torch ranks overlap: rank r reads every row from r on",
        "pipeline/digits/torch_engine.py", ".sort_by(\"path\").to_pylist())[rank::world]",
        ".sort_by(\"path\").to_pylist())[rank:]",
        ("tests/test_digits.py::test_torch_ranks_split_a_table_of_several_files_once_each",)),
    Bug("GAN ranks read the same files",
        "pipeline/gan/data.py", "return fs, files[rank::world], False", "return fs, files[:len(files) // world], False",
        ("tests/test_gpu_training.py::test_several_files_shard_over_several_ranks_once_each",)),
    Bug("digits resume ignores the data's version",
        "pipeline/digits/job.py", '"data": data_version(opts.input), ', "",
        ("tests/test_training_run.py::test_resume_auto_starts_fresh_when_the_input_table_changed",)),
    Bug("GAN resume ignores the data's version",
        "pipeline/gan/job.py", '"data": data_version(opts.input), ', "",
        ("tests/test_training_run.py::test_resume_auto_starts_fresh_when_the_input_table_changed",)),
    Bug("upscale hands the network BGR",
        "pipeline/gan/upscale.py", "arr = None if reason else im.to_rgb(im.row_to_array(int(h), int(w), int(c), d))",
        "arr = None if reason else im.to_rgb(im.row_to_array(int(h), int(w), int(c), d))[:, :, ::-1].copy()",
        ("tests/test_gan.py::test_upscale_keeps_the_colour_order",)),
)


def copy_tree(dest: str) -> None:
    """The files git knows of or would add (no venvs, builds or outputs), as they are now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def run_tests(bug: Bug | None, tests: tuple[str, ...], python: str) -> tuple[int, float, list[str]]:
    """(pytest's exit status, seconds, its last line) in a copy of the tree with `bug` planted (None: as it is)."""
    with tempfile.TemporaryDirectory(prefix="planted-") as tree:
        copy_tree(tree)
        if bug:
            path = os.path.join(tree, bug.file)
            with open(path) as fh:
                text = fh.read()
            if text.count(bug.old) != 1:
                raise SystemExit(f"planted bug {bug.name!r}: {bug.file} no longer has its line once; "
                                 "update scripts/planted_bugs.py")
            with open(path, "w") as fh:
                fh.write(text.replace(bug.old, bug.new))
        env = {**os.environ, "PYTHONPATH": tree, "PYTHONDONTWRITEBYTECODE": "1"}
        t0 = time.time()
        r = subprocess.run([python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=tree,
                           env=env, capture_output=True, text=True, timeout=1800)
        return r.returncode, time.time() - t0, (r.stdout + r.stderr).strip().splitlines()[-1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", help="only the bugs whose name contains this")
    args = parser.parse_args()
    bugs = [b for b in BUGS if not args.k or args.k in b.name]
    # the control: unplanted, the same tests pass in a copy, so a failure below is the bug's doing
    code, seconds, tail = run_tests(None, tuple(dict.fromkeys(t for b in bugs for t in b.tests)), sys.executable)
    print(f"control  {seconds:5.0f}s  the tree as it is  ({' '.join(tail)})", flush=True)
    if code != 0:
        print("make planted: the guarding tests fail without any planted bug; fix them first")
        return 1
    survived = []
    for bug in bugs:
        code, seconds, tail = run_tests(bug, bug.tests, sys.executable)
        killed = code == 1  # tests ran and failed; 2-5 would be pytest's own trouble, not a kill
        print(f"{'killed  ' if killed else 'SURVIVED'} {seconds:5.0f}s  {bug.name}  ({' '.join(tail)})", flush=True)
        if not killed:
            survived.append(bug.name)
    if survived:
        print(f"make planted: {len(survived)} planted bug(s) survived the suite: {'; '.join(survived)}")
        return 1
    print("make planted: every planted bug was killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
