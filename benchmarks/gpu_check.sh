#!/usr/bin/env bash
# The GPU check in one call (docs/gpus.md, "One-call GPU check"): on a GPU machine, in under
# 9 minutes, every step under its own time limit, carrying on past a failed step:
#   tests      the non-e2e suite, JST_TEST_DEVICE=cuda (tiny_config and the methods' tests
#              train there); modules that need a package absent on that machine (mlflow,
#              dvc, moto, onnxruntime-gpu's CUDA provider) are skipped with the reason
#   plain      benchmarks/plain_loop.py: the project's training step / epoch vs a plain loop
#   cost       benchmarks/search_cost.py --repeats 3: a JST search epoch vs a dense epoch
#   search     benchmarks/compare_methods.py: a short JST and l1 search + fine-tuning
#   torchrun   benchmarks/gpu_torchrun.py under torchrun --nproc_per_node=1 (NCCL on CUDA)
# then writes benchmarks/results/gpu_check.json (and $OUT/gpu_check.json, the logs, and a
# tarball of every step's output where $OUT is set).
#
#   bash benchmarks/gpu_check.sh                  # the GPU run (device cuda)
#   bash benchmarks/gpu_check.sh --quick          # every step tiny, on the CPU (~2 min)
#   bash benchmarks/gpu_check.sh --prepare-carry  # here, before the run: .gpu_carry/ with the
#                                                 # wheels the GPU machine lacks + cifar10-dev
# Options: --device cpu|cuda|auto, --data DIR (an ImageFolder; default: ../shared/datasets/
# cifar10-dev, else .gpu_carry/cifar10-dev.tar, else the embedded digits set), --out FILE.
# Environment: GPU_CHECK_PYTHON (the Python command), GPU_CHECK_TESTS (the pytest selection).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0 PREPARE=0 DEVICE="" DATA="${GPU_CHECK_DATA:-}" RESULT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --prepare-carry) PREPARE=1 ;;
        --device) DEVICE=$2; shift ;;
        --data) DATA=$2; shift ;;
        --out) RESULT=$2; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

CARRY=${GPU_CHECK_CARRY:-$ROOT/.gpu_carry}
# The project's runtime packages that the GPU machine's image lacks and that are small
# enough to carry (docs/gpus.md); mlflow, dvc and onnxruntime-gpu are not carried.
CARRIED=(pydantic pydantic-core annotated-types typing-inspection typing-extensions webdataset braceexpand)

if [ "$PREPARE" = 1 ]; then
    mkdir -p "$CARRY/wheels"
    grep -qx '/.gpu_carry/' .gitignore || echo '/.gpu_carry/' >>.gitignore
    pins=()
    for name in "${CARRIED[@]}"; do  # the versions uv.lock pins
        version=$(awk -v n="name = \"$name\"" '$0==n {getline; gsub(/version = |"/, ""); print; exit}' uv.lock)
        pins+=("$name==$version")
    done
    rm -f "$CARRY"/wheels/*.whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$CARRY/wheels" "${pins[@]}" || exit 1
    data=${DATA:-$ROOT/../shared/datasets/cifar10-dev}
    if [ -d "$data" ]; then
        tar -C "$(dirname "$data")" -cf "$CARRY/cifar10-dev.tar" "$(basename "$data")"
    else
        echo "no data set at $data: the GPU run will use the embedded digits set" >&2
    fi
    ls -l "$CARRY" "$CARRY/wheels"
    du -sh "$CARRY"
    exit 0
fi

START=$(date +%s)
if [ "$QUICK" = 1 ]; then
    DEVICE=${DEVICE:-cpu}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # light on a shared CPU
    RESULT=${RESULT:-${TMPDIR:-/tmp}/gpu_check_quick.json}
else
    DEVICE=${DEVICE:-cuda}
    RESULT=${RESULT:-$ROOT/benchmarks/results/gpu_check.json}
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
echo "work folder $WORK" >&2
: >"$WORK/steps.tsv"

# The Python: $GPU_CHECK_PYTHON if set, else the project's locked environment where uv and
# .venv exist (here; .venv does not travel), else the machine's
# python3 (the GPU machine: torch, torchvision, onnx, onnxruntime; no mlflow, dvc, pydantic)
# with the carried wheels on PYTHONPATH.
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    read -r -a PY <<<"$GPU_CHECK_PYTHON"
elif command -v uv >/dev/null 2>&1 && [ -d .venv ]; then
    PY=(uv run --frozen python)
else
    PY=(python3)
    if compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" "$CARRY"/wheels/*.whl >"$WORK/wheels.log" 2>&1 \
            && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" \
            || echo "installing the carried wheels failed: $WORK/wheels.log" >&2
    fi
fi

# What the machine lacks: the distributions whose tests may skip (JST_TESTS_ALLOW_MISSING).
"${PY[@]}" - >"$WORK/deps.json" 2>"$WORK/deps.log" <<'EOF'
import importlib.util, json
modules = {"pydantic": "pydantic", "mlflow": "mlflow", "dvc": "dvc", "moto": "moto",
           "flask-cors": "flask_cors", "typer": "typer", "rich": "rich",
           "safetensors": "safetensors", "hypothesis": "hypothesis", "yaml": "yaml",
           "sklearn": "sklearn", "matplotlib": "matplotlib", "onnxscript": "onnxscript",
           "pytest-timeout": "pytest_timeout", "pytest-xdist": "xdist",
           "webdataset": "webdataset"}
def absent(module):
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True
missing = [d for d, m in modules.items() if absent(m)]
try:
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        missing.append("onnxruntime-gpu")
except ImportError:
    missing.append("onnxruntime")
print(json.dumps(missing))
EOF
MISSING=$(cat "$WORK/deps.json" 2>/dev/null)
[ -n "$MISSING" ] || MISSING='["unknown: the check failed, see deps.log"]'
ALLOW=$(python3 -c "import json,sys; print(','.join(d for d in json.loads(sys.argv[1]) if d in ('mlflow','dvc','moto','flask-cors','onnxruntime-gpu')))" "$MISSING" 2>/dev/null)
echo "python: ${PY[*]}; missing: $MISSING; tests may skip for: ${ALLOW:-nothing}" >&2

# The data: an ImageFolder (cifar10-dev) where one travels, else the embedded digits set.
if [ "$QUICK" = 1 ]; then
    DATASET=(--dataset digits --data unused --image-size 8)
else
    if [ -z "$DATA" ]; then
        for candidate in "$ROOT/../shared/datasets/cifar10-dev" "$ROOT/shared/datasets/cifar10-dev"; do
            [ -d "$candidate" ] && DATA=$candidate && break
        done
    fi
    if [ -z "$DATA" ] && [ -f "$CARRY/cifar10-dev.tar" ]; then
        tar -C "$WORK" -xf "$CARRY/cifar10-dev.tar" && DATA=$WORK/cifar10-dev
    fi
    if [ -n "$DATA" ] && [ -d "$DATA" ]; then
        DATASET=(--dataset imagefolder --data "$DATA" --image-size 32)
    else
        echo "no cifar10-dev here: the embedded digits set (16 x 16) instead" >&2
        DATASET=(--dataset digits --data unused --image-size 16)
    fi
fi

# run_step NAME LIMIT_S COMMAND...: its own time limit (the process group is killed at
# it), output in $WORK/NAME.log, a line in steps.tsv; never stops the script.
run_step() {
    local name=$1 limit=$2 started rc status
    shift 2
    echo "== $name (limit ${limit}s): $*" >&2
    started=$(date +%s.%N)
    # SIGINT for pytest: it stops, prints its summary and writes the JUnit file
    timeout -s "${STEP_SIGNAL:-TERM}" -k 15 "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137|130) status=timeout ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" \
        "$(python3 -c "import sys,time; print(round(time.time()-float(sys.argv[1]),1))" "$started")" \
        "$limit" >>"$WORK/steps.tsv"
    tail -n 4 "$WORK/$name.log" >&2
    echo "== $name: $status (rc $rc)" >&2
}
skip_step() {  # NAME STATUS REASON
    printf '%s\t%s\t\t0\t0\t%s\n' "$1" "$2" "$3" >>"$WORK/steps.tsv"
    echo "== $1: $2 ($3)" >&2
}

if [ "$QUICK" = 1 ]; then
    TESTS=(tests/test_evaluate.py tests/test_hardware.py
           "tests/methods/test_baselines.py::test_baseline_meets_budget[0.5-l1]")
    XDIST=()
    LIMITS=(tests=150 plain=90 cost=120 search=150 torchrun=120)
    PLAIN=(--rounds 1 --images 256 --batch-size 64)
    COST=(--repeats 1 --epochs 3 --dense-epochs 1)
    SEARCH=(--search-epochs 3 --finetune-epochs 1)
    TORCHRUN=(--epochs 3)
else
    TESTS=(tests)
    XDIST=()
    [[ "$MISSING" != *pytest-xdist* ]] && XDIST=(-n 8 --dist loadfile)
    # 540 s in all, with the set-up, the imports and a margin for a step killed at its limit
    LIMITS=(tests=200 plain=70 cost=100 search=70 torchrun=55)
    PLAIN=(--rounds 3)
    COST=(--repeats 3)
    SEARCH=(--search-epochs 4 --finetune-epochs 2 --precision bf16)
    TORCHRUN=(--epochs 4)
fi
[ -n "${GPU_CHECK_TESTS:-}" ] && read -r -a TESTS <<<"$GPU_CHECK_TESTS"  # a narrower selection
limit() { local kv; for kv in "${LIMITS[@]}"; do [ "${kv%%=*}" = "$1" ] && echo "${kv#*=}"; done; }

PER_TEST=()
[[ "$MISSING" != *pytest-timeout* ]] && PER_TEST=(--timeout 120)
STEP_SIGNAL=INT PYTEST_ADDOPTS="" JST_TEST_DEVICE=$DEVICE JST_TESTS_ALLOW_MISSING=$ALLOW \
    run_step tests "$(limit tests)" "${PY[@]}" -m pytest -m "not e2e" --ignore=tests/e2e \
    -p no:cacheprovider -q "${PER_TEST[@]}" "${XDIST[@]}" --junitxml="$WORK/junit.xml" "${TESTS[@]}"

if [ -f benchmarks/plain_loop.py ]; then
    run_step plain "$(limit plain)" "${PY[@]}" benchmarks/plain_loop.py --device "$DEVICE" \
        --out "$WORK/plain_loop.json" "${PLAIN[@]}"
else
    skip_step plain missing "benchmarks/plain_loop.py does not exist"
fi

run_step cost "$(limit cost)" "${PY[@]}" benchmarks/search_cost.py --device "$DEVICE" \
    "${DATASET[@]}" "${COST[@]}" --out "$WORK/search_cost.json"

run_step search "$(limit search)" "${PY[@]}" benchmarks/compare_methods.py --device "$DEVICE" \
    "${DATASET[@]}" --variants jst l1 --budgets 0.5 --seeds 0 "${SEARCH[@]}" \
    --results "$WORK/compare_methods.json" --report "$WORK/compare_methods.md"

run_step torchrun "$(limit torchrun)" "${PY[@]}" -m torch.distributed.run --standalone \
    --nproc_per_node=1 benchmarks/gpu_torchrun.py --device "$DEVICE" "${DATASET[@]}" \
    "${TORCHRUN[@]}" --out "$WORK/torchrun.json"

# The record: plain stdlib Python, whatever the steps did.
python3 - "$WORK" "$RESULT" "$DEVICE" "$QUICK" "$MISSING" "$ALLOW" "$START" "${DATASET[*]}" <<'EOF'
import json, subprocess, sys, time, xml.etree.ElementTree as ET
from pathlib import Path

work, result, device, quick, missing, allow, start, dataset = sys.argv[1:]
work = Path(work)

def load(name):
    try:
        return json.loads((work / name).read_text())
    except (OSError, ValueError):
        return {}

steps = {}
for line in (work / "steps.tsv").read_text().splitlines():
    name, status, rc, wall, limit, *why = line.split("\t")
    steps[name] = {"status": status, "rc": int(rc) if rc else None, "wall_s": float(wall),
                   "limit_s": int(limit), "log": f"{name}.log"}
    if why:
        steps[name]["reason"] = why[0]

tests = {"passed": None, "failed": None, "errors": None, "skipped": None}
skip_reasons = {}
try:
    suites = ET.parse(work / "junit.xml").getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    total = sum(int(s.get("tests", 0)) for s in suites)
    tests["failed"] = sum(int(s.get("failures", 0)) for s in suites)
    tests["errors"] = sum(int(s.get("errors", 0)) for s in suites)
    tests["skipped"] = sum(int(s.get("skipped", 0)) for s in suites)
    tests["passed"] = total - tests["failed"] - tests["errors"] - tests["skipped"]
    for case in (c for s in suites for c in s.iter("testcase")):
        for skip in case.iter("skipped"):
            reason = (skip.get("message") or "").strip()
            skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
        if case.find("failure") is not None or case.find("error") is not None:
            tests.setdefault("not_passed", []).append(f"{case.get('classname')}::{case.get('name')}")
except (OSError, ET.ParseError):
    pass

plain, cost, torchrun = load("plain_loop.json"), load("search_cost.json"), load("torchrun.json")
search = {r["variant"]: {k: r.get(k) for k in ("test_top1", "val_top1", "flops_ratio", "search_s",
                                              "wall_s", "precision", "arch_sha256")}
          for r in load("compare_methods.json").get("runs", [])}
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            timeout=10).stdout.strip() or None
except (OSError, subprocess.SubprocessError):
    commit = None
machine = cost.get("machine") or {}
record = {
    "quick": quick == "1",
    "device": plain.get("device") or cost.get("device") or device,
    "device_name": machine.get("device"),
    "torch": plain.get("torch") or machine.get("torch"),
    "commit": commit,
    "data": dataset,
    "plain_images_per_s": plain.get("plain_images_per_s"),
    "project_step_images_per_s": plain.get("project_step_images_per_s"),
    "project_epoch_images_per_s": plain.get("project_epoch_images_per_s"),
    "step_over_plain": plain.get("step_over_plain"),
    "epoch_over_plain": plain.get("epoch_over_plain"),
    "jst_over_dense_epoch_time": cost.get("ratio"),
    "jst_over_dense_epoch_cpu_time": cost.get("cpu_ratio"),
    "search_cost_numerics": cost.get("numerics"),
    "tests_passed": tests["passed"],
    "tests_failed": tests["failed"],
    "tests_errors": tests["errors"],
    "tests_skipped": tests["skipped"],
    "tests_not_passed": tests.get("not_passed", []),
    "tests_skip_reasons": skip_reasons,
    "missing_dependencies": json.loads(missing) if missing.startswith("[") else missing,
    "tests_allowed_missing": [d for d in allow.split(",") if d],
    "search": search,
    "torchrun": torchrun,
    "steps": steps,
    "wall_s": round(time.time() - int(start), 1),
    "ok": all(s["status"] == "ok" for s in steps.values()) and not tests["failed"]
          and not tests["errors"],
}
out = Path(result)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps({k: v for k, v in record.items() if k not in ("steps", "tests_skip_reasons")},
                 indent=2))
print("steps:", ", ".join(f"{n} {s['status']} {s['wall_s']}s" for n, s in steps.items()))
print(f"wrote {out}")
EOF

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then  # what comes back from the device machine
    cp "$RESULT" "$OUT/gpu_check.json"
    cp "$WORK/tests.log" "$OUT/pytest.log" 2>/dev/null
    tar -C "$WORK" -czf "$OUT/gpu_check_steps.tar.gz" --exclude site --exclude cifar10-dev .
fi
