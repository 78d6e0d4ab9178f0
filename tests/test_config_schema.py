"""The experiment-config schema: every bad key or value is one line naming key, value and what is
allowed, from a file or from a flag, before anything runs (issue 11, item 4)."""

from __future__ import annotations

import pytest
import yaml

from edgecaffe.cli import main
from edgecaffe.experiment.config import KEYS, ConfigError, load_config
from edgecaffe.experiment.schema import BOUNDS

# (YAML text, text the one-line error must contain). The issue's cases first.
ISSUE_CASES = [
    ("mem_limit: true\n", "mem_limit: True is not allowed; expected a memory size"),
    ("mean-gap-ms: .nan\n", "mean-gap-ms: nan is not allowed; expected `float` > 0.0"),
    ("mean-gap-ms: .inf\n", "mean-gap-ms: inf is not allowed; expected `float` <= "),
    ("blas-threads: -4\n", "blas-threads: -4 is not allowed; expected `int` >= 1"),
    ("arrivals:\n- {networks: [AgeNet], time: -1000}\n",
     "arrivals[0].time: -1000 is not allowed; expected `float` >= 0.0"),
    ("n-arrivals: 1000000000000\n", "n-arrivals: 1000000000000 is not allowed; expected `int` "
     "<= 100000 (a larger value needs allow-large: true or --allow-large)"),
    ("matrix: {repetitions: 1000000000}\n", "matrix.repetitions: 1000000000 is not allowed; "
     "expected `int` <= 1000"),
    ("n-workers: 500\n", "n-workers: 500 is not allowed; expected `int` <= 64"),
]
MORE_CASES = [
    ("workers: 2.5\n", "workers: 2.5 is not allowed; expected `int`, got `float`"),
    ("n_arrivals: '10'\n", "n_arrivals: '10' is not allowed; expected `int`, got `str`"),
    ("mem-limit: -5\n", "mem-limit: -5 is not allowed; expected a memory size"),
    ("mem-limit: 4096G\n", "mem-limit: '4096G' is not allowed; expected at most 1024 GiB"),
    ("seed: -1\n", "seed: -1 is not allowed; expected `int` >= 0"),
    ("multiplier: 0\n", "multiplier: 0 is not allowed; expected `float` > 0.0"),
    ("networks: []\n", "networks: [] is not allowed; expected `array` of length >= 1"),
    ("matrix: {modes: [masa, turbo]}\n", "matrix.modes[1]: 'turbo' is not allowed; choose "
     "from bulk"),
    ("matrix: {n-workers: [2, 1000]}\n", "matrix.workers[1]: 1000 is not allowed"),
    ("matrix: {mem_limits: [512M, true]}\n", "matrix.mem_limits[1]: True is not allowed"),
    ("matrix: {mem_limits: [1M, 2M, 3M, 4M, 5M, 6M, 7M, 8M, 9M, 10M], repetitions: 1000, "
     "modes: [masa, bulk]}\n", "matrix: 20000 runs is not allowed; expected at most 10000"),
    ("synthetic: yes please\n", "synthetic: 'yes please' is not allowed; expected `bool`"),
    ("blas-threads: auto\n", "blas-threads: 'auto' is not allowed; choose from adaptive"),
    ("set: tiny-9\n", "set: 'tiny-9' is not allowed; choose from small-3"),
    ('output-prefix: "a\\0"\n', "output-prefix: 'a\\x00' is not allowed; expected a name without "
     "NUL characters"),
    ('networks: ["a\\0b"]\n', "networks[0]: 'a\\x00b' is not allowed; expected a name without"),
]


def _load(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return load_config(path), path


@pytest.mark.parametrize(("text", "message"), ISSUE_CASES + MORE_CASES)
def test_bad_values_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, text)
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith(str(tmp_path / "bad.yaml") + ": ")
    assert message in text


def _wrong_type(canonical: str):
    """A value of the wrong type for the key: a mapping, except for the one key that is one."""
    return [1, 2] if canonical == "matrix" else {"nested": 1}


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_rejects_a_wrong_type(tmp_path, key):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, yaml.safe_dump({key: _wrong_type(KEYS[key])}))
    text = str(error.value)
    assert "\n" not in text and f"{key}: " in text, text
    assert "is not allowed" in text or "expected a mapping" in text, text


@pytest.mark.parametrize("key", sorted(k for k, c in KEYS.items()
                                      if c in BOUNDS or c == "mem_limit"))
def test_booleans_are_not_numbers(tmp_path, key):
    with pytest.raises(ConfigError, match=f"{key}: True is not allowed"):
        _load(tmp_path, f"{key}: true\n")


def test_allow_large_lifts_the_upper_bounds(tmp_path):
    config, _ = _load(tmp_path, "n-workers: 500\nn-arrivals: 200000\nallow-large: true\n")
    assert config.workers == 500 and config.n_arrivals == 200000
    with pytest.raises(ConfigError, match=r"n-arrivals: 1000000000000 is not allowed; expected "
                                          r"`int` <= 100000000$"):
        _load(tmp_path, "n-arrivals: 1000000000000\nallow-large: true\n")
    assert load_config(None, {"workers": 300, "allow_large": True}).workers == 300


def test_good_values_still_load(tmp_path):
    config, _ = _load(tmp_path, "mem_limit: 1G\nn-workers: 4\nmean-gap-ms: 250\n"
                                "blas-threads: 2\nnetworks: [AgeNet, GenderNet]\n"
                                "matrix: {modes: masa, repetitions: 3}\n")
    assert (config.mem_limit, config.workers, config.mean_gap_ms) == ("1G", 4, 250.0)
    assert config.matrix["modes"] == ["masa"] and config.matrix["repetitions"] == 3
    assert load_config(None, {"mem_limit": 2**29}).mem_limit == 2**29
    assert _load(tmp_path, "blas-threads: adaptive\n")[0].blas_threads == "adaptive"
    assert load_config(None, {"blas_threads": "adaptive"}).blas_threads == "adaptive"


@pytest.mark.parametrize(("flags", "message"), [
    (["--n-workers", "500"], "--n-workers: 500 is not allowed; expected `int` <= 64"),
    (["--blas-threads", "-4"], "--blas-threads: -4 is not allowed; expected `int` >= 1"),
    (["--mean-gap-ms", "nan"], "--mean-gap-ms: nan is not allowed"),
    (["--n-arrivals", "1000000000000"], "--n-arrivals: 1000000000000 is not allowed"),
    (["--mem-limit", "0"], "--mem-limit: '0' is not allowed"),
    (["--mode", "turbo"], "--mode: 'turbo' is not allowed; choose from bulk"),
    (["--multiplier", "-1"], "--multiplier: -1.0 is not allowed"),
])
def test_flags_go_through_the_same_schema(tmp_path, capsys, flags, message):
    assert main(["experiment", *flags, "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not any(tmp_path.iterdir())  # nothing ran


def test_a_flag_overrides_a_bad_file_value_and_is_named_as_a_flag(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n-workers: 500\n")
    assert load_config(path, {"workers": 3}).workers == 3
    with pytest.raises(ConfigError, match="--n-workers: 0 is not allowed"):
        load_config(path, {"workers": 0})


# --- fuzzing: only ConfigError comes out ----------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgecaffe.experiment.config import arrivals_of, expand_matrix  # noqa: E402

SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
           | st.sampled_from(["masa", "512M", "poisson", "small-3", "AgeNet", "-1", "1e400"])
           | st.text(max_size=6))
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8)
KEY_NAMES = st.sampled_from(sorted(KEYS)) | st.text(max_size=8)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.dictionaries(KEY_NAMES, VALUES, max_size=5)
       | st.dictionaries(st.just("matrix"), st.dictionaries(
           st.sampled_from(["sets", "modes", "mem_limits", "policies", "workers", "multipliers",
                            "repetitions", "bogus"]), VALUES, max_size=4), min_size=1)
       | st.dictionaries(st.just("arrivals"), st.lists(
           st.fixed_dictionaries({"networks": VALUES, "time": VALUES}), max_size=3), min_size=1))
def test_fuzzed_configs_raise_only_config_errors(tmp_path, document):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        config = load_config(path)
        for _, run in expand_matrix(config):
            arrivals, _ = arrivals_of(run, 100.0)
            assert len(arrivals) <= BOUNDS["n_arrivals"].high
    except ConfigError as error:
        assert "\n" not in str(error)
