"""The benchmark scripts keep working: each quick mode runs and writes sensible JSON.

The scripts run as a user runs them (``python benchmarks/<name>.py --quick``),
in a subprocess, with even smaller sizes and the tiny MobileNet so that the
file takes well under a minute and a half on 2 cores. XLA's backend
optimisation is turned down there: these tests check the plumbing, never the
figures (no timing assertions).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TORCH = importlib.util.find_spec("torch") is not None
TORCH_OPTIONAL = "PyTorch is optional: the benchmarks time it where installed"


def run_benchmark(tmp_path, script: str, *args: str) -> dict:
    """Runs ``benchmarks/<script> --quick ARGS --json ...``; returns the JSON it wrote."""
    path = tmp_path / "out.json"
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0",
               JAX_PLATFORMS="cpu")
    completed = subprocess.run(
        [sys.executable, os.path.join("benchmarks", script), "--quick", *args,
         "--json", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    assert f"wrote {path}" in completed.stdout
    with open(path) as f:
        return json.load(f)


def assert_positive_finite(value, what: str) -> None:
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (what, value)


def assert_machine_named(result: dict) -> None:
    machine = result["machine"]
    for key in ("backend", "device", "cpu", "cpu_count", "jax", "jaxlib", "numpy"):
        assert machine[key], key
    if os.path.exists("/proc/cpuinfo") and machine["cpu_details"]:  # x86 Linux: flags named
        assert set(machine["cpu_details"]) == {"family", "model", "flags"}
    assert result["command"].startswith("python benchmarks/")


@pytest.fixture(scope="module")
def activation_result(tmp_path_factory):
    return run_benchmark(tmp_path_factory.mktemp("activation"), "activation.py",
                         "--sizes", "10", "12", "--repeats", "1")


def test_activation_json_names_the_machine(activation_result):
    assert_machine_named(activation_result)
    assert activation_result["config"]["sizes"] == [10, 12]


def test_activation_covers_every_mode_dtype_and_size(activation_result):
    points = {(r["mode"], r["dtype"], r["log2_size"]) for r in activation_result["results"]}
    assert points == {(mode, dtype, size) for mode in ("forward", "forward+backward")
                      for dtype in ("float32", "bfloat16") for size in (10, 12)}


@pytest.mark.parametrize("mode, names", [
    ("forward", ["scale", "jax.nn", "jrelu6", "scale donated", "jax.nn donated",
                 "jrelu6 inplace"]),
    ("forward+backward", ["scale", "jax.nn", "jrelu6"]),
])
def test_activation_times_every_jax_candidate(activation_result, mode, names):
    for record in activation_result["results"]:
        if record["mode"] == mode:
            for name in names:
                assert_positive_finite(record["gb_per_s"][name], (record["dtype"], name))


def test_activation_numpy_column_is_float32_only(activation_result):
    for record in activation_result["results"]:
        if record["mode"] == "forward":
            assert ("numpy inplace" in record["gb_per_s"]) == (record["dtype"] == "float32")


def test_activation_torch_columns_follow_torch(activation_result):
    for record in activation_result["results"]:
        present = "torch" in record["gb_per_s"]
        assert present == HAS_TORCH
        if record["mode"] == "forward":
            assert ("torch inplace" in record["gb_per_s"]) == HAS_TORCH


def test_activation_ratios_are_positive_where_measured(activation_result):
    for record in activation_result["results"]:
        ratios = record["ratios"]
        assert_positive_finite(ratios["jrelu6_vs_jax.nn"], "jrelu6_vs_jax.nn")
        assert_positive_finite(ratios["jrelu6_vs_scale"], "jrelu6_vs_scale")
        if record["mode"] == "forward" and record["dtype"] == "float32":
            assert_positive_finite(ratios["inplace_vs_numpy_inplace"], "inplace_vs_numpy")
        if HAS_TORCH:
            assert_positive_finite(ratios["jrelu6_vs_torch"], "jrelu6_vs_torch")


def test_activation_goals_need_big_arrays(activation_result):
    # Only 2^10 and 2^12 were run: the goals (stated for >= 2^22) are not judged.
    for goal in activation_result["goals"].values():
        assert goal["met"] is None and goal["points"] == 0


@pytest.mark.slow
def test_model_activation_quick(tmp_path):
    result = run_benchmark(tmp_path, "model_activation.py", "--model", "tiny",
                           "--batch", "2", "--size", "16", "--repeats", "1")
    assert_machine_named(result)
    assert set(result["median_step_seconds"]) == {"jax.nn", "jrelu6"}
    for key in ("step_time", "temp_memory", "fusions"):
        assert_positive_finite(result["ratios"][key], key)
    for stats in result["compiled"].values():
        assert stats["fusions"] > 0 and stats["temp_bytes"] > 0
    assert set(result["goals"]) == {"step_time_ratio", "temp_memory_ratio"}


@pytest.mark.slow
def test_train_step_quick(tmp_path):
    result = run_benchmark(tmp_path, "train_step.py", "--model", "tiny", "--grouped",
                           "--batch", "2", "--size", "16", "--repeats", "1")
    assert_machine_named(result)
    assert set(result["images_per_second"]) == {"jax (ours)", "jax grouped"}  # no tiny torch
    for name, value in result["images_per_second"].items():
        assert_positive_finite(value, name)
    assert_positive_finite(result["ratios"]["ours_vs_grouped"], "ours_vs_grouped")
    assert result["ratios"]["ours_vs_torch"] is None
    assert result["ratios"]["ours_vs_torch_compile"] is None
    assert result["goals"]["ours_vs_torch"]["met"] is None


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["small-input", "standard"])
def test_train_step_takes_the_variant(tmp_path, variant):
    result = run_benchmark(tmp_path, "train_step.py", "--model", "tiny", "--variant", variant,
                           "--batch", "2", "--size", "16", "--repeats", "1")
    assert result["config"]["variant"] == variant
    assert result["config"]["small_input"] == (variant == "small-input")
    assert set(result["images_per_second"]) == {"jax (ours)"}


@pytest.mark.slow
def test_train_step_times_consecutive_steps_per_sample(tmp_path):
    result = run_benchmark(tmp_path, "train_step.py", "--model", "tiny", "--batch", "2",
                           "--size", "16", "--repeats", "1", "--steps-per-sample", "2")
    assert result["config"]["steps_per_sample"] == 2
    assert_positive_finite(result["images_per_second"]["jax (ours)"], "jax (ours)")


def test_train_step_refuses_zero_steps_per_sample():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"),
                           "--steps-per-sample", "0"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2
    assert "--steps-per-sample must be >= 1, got 0" in done.stderr


@pytest.mark.slow
def test_train_step_times_float32_beside_bfloat16(tmp_path):
    result = run_benchmark(tmp_path, "train_step.py", "--model", "tiny", "--batch", "2",
                           "--size", "16", "--repeats", "1", "--dtype", "bfloat16",
                           "--float32-too")
    assert_machine_named(result)
    assert set(result["images_per_second"]) == {"jax (ours)", "jax (ours, float32)"}
    assert_positive_finite(result["ratios"]["ours_vs_float32"], "ours_vs_float32")


def test_train_step_refuses_float32_too_in_float32():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"),
                           "--dtype", "float32", "--float32-too"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "--float32-too compares a bfloat16 step with the float32 one" in done.stderr


@pytest.mark.slow
def test_step_ab_takes_turns_between_dtypes(tmp_path):
    result = run_benchmark(tmp_path, "step_ab.py", "--dtypes", "float32,bfloat16")
    assert_machine_named(result)
    assert [row["candidate"] for row in result["results"]] == ["new float32", "new bfloat16"]
    for name, times in result["step_seconds"].items():
        assert len(times) == 3, name  # --quick: three steps each
    for row in result["results"]:
        assert_positive_finite(row["ratio"], row["candidate"])
        assert row["temp_mib"] > 0
    assert result["results"][0]["ratio"] == 1.0


@pytest.mark.slow
def test_data_parallel_splits_every_native_call_between_devices(tmp_path):
    result = run_benchmark(tmp_path, "data_parallel.py", "--dtype", "bfloat16")
    assert_machine_named(result)
    one, two = result["results"]
    assert (one["devices"], two["devices"]) == (1, 2)
    assert one["all_gathers"] == two["all_gathers"] == 0
    assert two["all_reduces"] > 0 and two["time_vs_1_device"] > 0
    if one["native_call_batches"]:  # Native kernels built here: half the batch each.
        assert two["native_call_batches"] == [b // 2 for b in one["native_call_batches"]]
    if one["pointwise_call_rows"] is not None:  # AVX512-BF16: half the rows each.
        assert two["pointwise_call_rows"] == [r // 2 for r in one["pointwise_call_rows"]]


@pytest.mark.slow
def test_native_ab_builds_both_revisions_and_times_them(tmp_path):
    from mobilenet import native

    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason()}")
    result = run_benchmark(tmp_path, "native_ab.py", "--against", "HEAD")
    assert_machine_named(result)
    assert [row["stride"] for row in result["results"]] == [1, 2]
    for row in result["results"]:
        for key in ("old_ms", "new_ms", "median_ratio", "min_ratio"):
            assert_positive_finite(row[key], key)


@pytest.mark.slow
def test_cpu_products_names_each_products_kernel(tmp_path):
    result = run_benchmark(tmp_path, "cpu_products.py")
    assert_machine_named(result)
    assert [row["product"] for row in result["results"]] == [
        "y = x @ w", "dx = g @ w.T", "dw = x.T @ g"]
    for row in result["results"]:
        for form in ("float32", "bfloat16", "mixed"):
            assert_positive_finite(row[f"{form}_ms"], form)
            assert row[f"{form}_kernel"].split("+")[0] in ("ynn", "onednn", "dot", "other")
        assert "convert" not in row["float32_kernel"]
    native_rows = [row for row in result["results"] if row["native_ms"] is not None]
    if native_rows:  # The native 1x1 kernel gradient (a CPU with AVX512-BF16).
        (row,) = native_rows
        assert row["product"] == "dw = x.T @ g"
        assert_positive_finite(row["native_ms"], "native")
        assert_positive_finite(row["native_vs_mixed"], "native vs mixed")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_stem_conv_times_both_stems_at_both_strides(tmp_path, dtype):
    result = run_benchmark(tmp_path, "stem_conv.py", "--dtype", dtype)
    assert_machine_named(result)
    assert result["dtype"] == dtype
    assert [(row["stride"], row["work"]) for row in result["results"]] == [
        (1, "forward"), (1, "forward + kernel gradient"),
        (2, "forward"), (2, "forward + kernel gradient")]
    for row in result["results"]:
        for key in ("conv_ms", "patch_ms", "patch_speedup"):
            assert_positive_finite(row[key], key)


def test_cpu_products_kernel_kind_reads_the_entry_computation():
    import cpu_products

    text = ("%fused (p: f32[2]) -> f32[2] { %convert.1 = f32[2] convert(%p) }\n"
            "ENTRY %main { %ynn_fusion = f32[4,2] fusion(%a, %b), "
            "backend_config={\"fusion_config\":{\"kind\":\"__ynn_fusion\"}} }")
    assert cpu_products.kernel_kind(text) == "ynn"
    assert cpu_products.kernel_kind("ENTRY %main { %d = f32[2,2] dot(%a, %b) "
                                    "%c = bf16[2,2] convert(%d) }") == "dot+convert"


@pytest.mark.slow
@pytest.mark.parity
@pytest.mark.skipif(not HAS_TORCH, reason=TORCH_OPTIONAL)
def test_step_ab_takes_turns_with_a_torch_worker(tmp_path):
    result = run_benchmark(tmp_path, "step_ab.py", "--torch")
    assert [row["candidate"] for row in result["results"]] == ["new float32", "torch float32"]
    assert len(result["step_seconds"]["torch float32"]) == 3
    for key in ("median", "fastest"):
        assert_positive_finite(result["ours_vs_torch"]["float32"][key], key)


def test_time_interleaved_settles_each_case_right_before_its_sample():
    import _harness

    log = []

    def case(name):
        return _harness.Case(lambda calls: calls, lambda calls: log.append((name, calls)),
                             lambda out: None)

    times = _harness.time_interleaved({"a": case("a"), "b": case("b")}, repeats=2,
                                      warmup=1, settle=3)
    # Warm-up round a, b (not settled); then b, a and a, b (rotated), each sample right
    # after three untimed calls of its own case.
    assert log == [("a", 1), ("b", 1), ("b", 3), ("b", 1), ("a", 3), ("a", 1),
                   ("a", 3), ("a", 1), ("b", 3), ("b", 1)]
    assert {name: len(t) for name, t in times.items()} == {"a": 2, "b": 2}


def test_step_ab_turn_orders_alternate_two_workers_and_shuffle_more():
    import step_ab

    assert step_ab.turn_orders(["a", "b"], 3) == [["a", "b"], ["b", "a"], ["a", "b"]]
    orders = step_ab.turn_orders(["a", "b", "c", "d"], 40)
    assert all(sorted(order) == ["a", "b", "c", "d"] for order in orders)
    assert orders == step_ab.turn_orders(["a", "b", "c", "d"], 40)  # Seeded.
    # Each worker follows each other one within a round at least once.
    follows = {(order[i], order[i + 1]) for order in orders for i in range(3)}
    assert follows == {(x, y) for x in "abcd" for y in "abcd" if x != y}


def test_step_ab_refuses_nothing_to_compare():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "step_ab.py"),
                           "--dtype", "float32"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2
    assert "nothing to compare: give --against, two --dtypes, --xla-flags or --torch" in (
        done.stderr)


@pytest.mark.slow
def test_step_ab_takes_turns_with_xla_flags(tmp_path):
    flags = "--xla_cpu_copy_insertion_use_region_analysis=true"
    result = run_benchmark(tmp_path, "step_ab.py", f"--xla-flags={flags}")
    assert [row["candidate"] for row in result["results"]] == [
        "new float32", f"new float32 {flags}"]
    assert len(result["step_seconds"][f"new float32 {flags}"]) == 3


def test_step_ab_names_a_worker_that_fails():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "step_ab.py"),
                           "--quick", "--xla-flags=--xla_no_such_flag=1"], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode != 0
    assert "step_ab: the worker for" in done.stderr


@pytest.mark.slow
@pytest.mark.parity
def test_train_step_against_torch_eager(tmp_path):
    pytest.importorskip("torch", reason="the PyTorch columns need torch")
    result = run_benchmark(tmp_path, "train_step.py", "--width", "0.35", "--batch", "2",
                           "--variant", "standard", "--repeats", "1", "--no-torch-compile")
    assert set(result["images_per_second"]) == {"jax (ours)", "torch"}
    assert_positive_finite(result["ratios"]["ours_vs_torch"], "ours_vs_torch")
    assert result["goals"]["ours_vs_torch"]["target"] == 1.25


@pytest.fixture(scope="module")
def breakdown_result(tmp_path_factory):
    args = ["--width", "0.35", "--batch", "2", "--variant", "standard", "--repeats", "2"]
    if not HAS_TORCH:
        args.append("--no-torch")
    return run_benchmark(tmp_path_factory.mktemp("breakdown"), "step_breakdown.py", *args)


def test_breakdown_names_the_machine(breakdown_result):
    assert_machine_named(breakdown_result)


def test_breakdown_counts_flops_and_bytes(breakdown_result):
    ours = breakdown_result["ours"]
    assert_positive_finite(ours["flops"], "flops")
    assert_positive_finite(ours["bytes_accessed"], "bytes_accessed")
    assert_positive_finite(breakdown_result["achieved"]["ours"]["gflop_s"], "gflop_s")
    assert_positive_finite(breakdown_result["machine_peaks"]["matmul_gflop_s"], "peak")


@pytest.mark.parametrize("kind", ["depthwise conv", "1x1 conv / matmul", "stem conv",
                                  "batch norm", "elementwise"])
def test_breakdown_finds_the_kinds_in_our_step(breakdown_result, kind):
    table = breakdown_result["ours"]["table"]
    assert set(table) == set(breakdown_result["kinds"])
    assert sum(table[kind].values()) > 0, kind


def test_breakdown_times_the_kernels_running_at_once(breakdown_result):
    t = breakdown_result["ours"]["timeline"]
    for key in ("span_seconds", "kernel_seconds", "busy_seconds"):
        assert_positive_finite(t[key], key)
    assert t["busy_seconds"] <= t["span_seconds"] + 1e-9
    assert t["busy_seconds"] <= t["kernel_seconds"] + 1e-9
    assert t["idle_seconds"] == pytest.approx(t["span_seconds"] - t["busy_seconds"])


def test_timeline_counts_overlapping_kernels_once():
    import step_breakdown

    # Step 1: a [0, 10) and b [5, 20) overlap, c [30, 40) after a gap; step 2 the same
    # shifted: medians equal each step's figures.
    runs = [[("a", 0, 10), ("c", 30, 40), ("b", 5, 20)],
            [("a", 100, 110), ("b", 105, 120), ("c", 130, 140)]]
    t = step_breakdown.xla_timeline(runs)
    assert t["span_seconds"] == pytest.approx(40e-9)
    assert t["kernel_seconds"] == pytest.approx(35e-9)
    assert t["busy_seconds"] == pytest.approx(30e-9)
    assert t["idle_seconds"] == pytest.approx(10e-9)
    assert step_breakdown.xla_kernel_times(runs) == {
        "a": pytest.approx([10e-9, 10e-9]), "b": pytest.approx([15e-9, 15e-9]),
        "c": pytest.approx([10e-9, 10e-9])}


def test_wall_shares_divide_overlapping_time_among_the_kernels_running():
    import step_breakdown

    # a [0, 10) alone for 5 ns, beside b for 5; b alone [10, 20); c [30, 40) alone after
    # a gap; in step 2 b also starts with a, so the two share a's whole time.
    runs = [[("a", 0, 10), ("c", 30, 40), ("b", 5, 20)],
            [("a", 100, 110), ("b", 100, 120), ("c", 130, 140)]]
    shares = step_breakdown.xla_wall_shares(runs)
    assert shares == {"a": pytest.approx([7.5e-9, 5e-9]), "b": pytest.approx([12.5e-9, 15e-9]),
                      "c": pytest.approx([10e-9, 10e-9])}
    busy = [sum(s[i] for s in shares.values()) for i in range(2)]
    assert busy == pytest.approx([30e-9, 30e-9])  # = xla_timeline's busy time


def test_breakdown_wall_shares_are_at_most_the_kernel_times(breakdown_result):
    ours = breakdown_result["ours"]
    wall = sum(sum(phases.values()) for phases in ours["wall_table"].values())
    kernels = sum(sum(phases.values()) for phases in ours["table"].values())
    assert wall <= kernels + 1e-9
    for k in ours["kernels"]:
        assert 0 <= k["wall_seconds"] <= k["seconds"] + 1e-12, k["kernel"]


@pytest.mark.parametrize("target,layer,kind", [
    ("jrelu6_pointwise_kernel_grad", "head/conv", "1x1 conv / matmul"),
    ("jrelu6_depthwise_kernel_grad", "block3/depthwise/conv", "depthwise conv"),
])
def test_breakdown_classifies_the_native_calls(target, layer, kind):
    import step_breakdown

    text = ("ENTRY %main (p: bf16[8,4]) -> f32[4,4] {\n"
            f"  %ffi_call.1 = f32[4,4]{{1,0}} custom-call(%p, %p), custom_call_target="
            f'"{target}", metadata={{op_name="jit(step)/transpose(jvp(MobileNetV2))/'
            f'MobileNetV2._forward/{layer}/cond/branch_0_fun/ffi_call"}}\n}}')
    computations, entry = step_breakdown.parse_hlo(text)
    instruction = computations[entry]["ffi_call.1"]
    assert step_breakdown.classify_xla(computations, instruction) == kind


@pytest.mark.parametrize("layer,kind", [
    ("stem/conv/conv._product", "stem conv"),  # PatchConv: a product over the windows.
    ("block3/expand/conv/conv._product", "1x1 conv / matmul"),
])
def test_breakdown_counts_a_product_by_its_layer(layer, kind):
    import step_breakdown

    text = ("ENTRY %main (a: f32[8,27], b: f32[27,4]) -> f32[8,4] {\n"
            "  %dot.1 = f32[8,4]{1,0} dot(%a, %b), lhs_contracting_dims={1}, "
            'rhs_contracting_dims={0}, metadata={op_name="jit(step)/jvp(MobileNetV2)/'
            f'MobileNetV2._forward/{layer}/dot_general"}}\n}}')
    computations, entry = step_breakdown.parse_hlo(text)
    assert step_breakdown.classify_xla(computations, computations[entry]["dot.1"]) == kind


def test_breakdown_puts_the_optimizer_in_the_update_phase(breakdown_result):
    phases = {k["phase"] for k in breakdown_result["ours"]["kernels"]}
    assert phases == {"forward", "backward", "update"}


@pytest.mark.parametrize("kind", ["depthwise conv", "1x1 conv / matmul", "batch norm"])
def test_breakdown_of_torch_finds_the_kinds(breakdown_result, kind):
    if not HAS_TORCH:
        pytest.skip("torch is not installed: no PyTorch breakdown")
    table = breakdown_result["torch"]["table"]
    assert sum(table[kind].values()) > 0, kind


@pytest.mark.parity
@pytest.mark.parametrize("num_classes, small_input", [(1000, False), (10, True)])
def test_torch_mobilenet_v2_has_the_flax_parameter_count(num_classes, small_input):
    pytest.importorskip("torch", reason=TORCH_OPTIONAL)
    import train_step
    from mobilenet import models
    from mobilenet.model_summary import count_params

    flax_model = models.create_model("mobilenet_v2", num_classes=num_classes,
                                     small_input=small_input)
    shapes = jax.eval_shape(
        lambda key: flax_model.init(key, jnp.zeros((1, 32, 32, 3)), train=False),
        jax.random.key(0))
    torch_model = train_step.TorchMobileNetV2(num_classes=num_classes, small_input=small_input)
    assert train_step.count_torch_params(torch_model) == count_params(shapes)


@pytest.mark.parity
def test_torch_step_runs_and_returns_a_finite_loss():
    pytest.importorskip("torch", reason=TORCH_OPTIONAL)
    import numpy as np

    import train_step

    config = {"num_classes": 10, "width": 0.35, "small_input": True, "dtype": "float32"}
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 16, 16, 3), dtype=np.float32)
    step, notes = train_step.torch_step(config, images, np.array([1, 2]), "cpu")
    assert math.isfinite(float(step()))
    assert notes["compiled"] is False and notes["device"] == "cpu"


def test_fake_quant_quick(tmp_path):
    result = run_benchmark(tmp_path, "fake_quant.py", "--sizes", "10", "--repeats", "1")
    assert_machine_named(result)
    assert {(r["dtype"], r["mode"]) for r in result["results"]} == {
        (d, m) for d in ("float32", "bfloat16") for m in ("forward", "forward+backward")
    }
    for r in result["results"]:
        assert set(r["seconds"]) == {"jnp", "jrelu6"}
        assert_positive_finite(r["time_ratio"], "time_ratio")
        assert r["compiled"]["jrelu6"]["fusions"] == r["compiled"]["jnp"]["fusions"]
