import pickle
import re
from pathlib import Path

import pytest

from shared.settings import (
    DEFAULT_MODEL,
    SERVICES,
    Settings,
    SettingsError,
    load_or_exit,
    markdown_table,
    options,
)


def test_defaults():
    s = Settings.load({}, dotenv=None)
    assert (s.host, s.port, s.model, s.backend, s.precision) == ("0.0.0.0", 8300, DEFAULT_MODEL, "auto", "exact")
    assert s.workers_bind == "tcp://127.0.0.1:5555" and s.broker_url == "tcp://127.0.0.1:5555"
    assert s.num_threads >= 1
    assert s.frontend_url.endswith("reranker-8300.ipc")
    assert s.export_dir is None and s.max_length is None and s.cors_origins == ("*",)


def test_environment_is_parsed():
    s = Settings.load({"NUM_THREADS": " 3 ", "PORT": "9000", "RERANKER_BACKEND": "Stub",
                       "RERANKER_CORS_ORIGINS": "https://a, https://b", "RERANKER_REQUEST_TIMEOUT": "2.5",
                       "RERANKER_MAX_LENGTH": "128", "RERANKER_MODEL": " /models/x "}, dotenv=None)
    assert s.num_threads == 3 and s.port == 9000 and s.backend == "stub" and s.max_length == 128
    assert s.cors_origins == ("https://a", "https://b") and s.request_timeout == 2.5 and s.model == "/models/x"
    assert s.frontend_url.endswith("reranker-9000.ipc")  # computed from the port given


@pytest.mark.parametrize("env, name, form", [
    ({"NUM_THREADS": "two"}, "NUM_THREADS", "an integer >= 1"),
    ({"NUM_THREADS": "0"}, "NUM_THREADS", "an integer >= 1"),
    ({"PORT": "70000"}, "PORT", "an integer in 1..65535"),
    ({"RERANKER_BACKEND": "tensorflow"}, "RERANKER_BACKEND", "one of auto, torch, onnx, openvino, stub"),
    ({"RERANKER_REQUEST_TIMEOUT": "-1"}, "RERANKER_REQUEST_TIMEOUT", "a number > 0"),
    ({"RERANKER_REQUEST_TIMEOUT": "nan"}, "RERANKER_REQUEST_TIMEOUT", "a number > 0"),
    ({"RERANKER_STUB_DELAY_MS": "inf"}, "RERANKER_STUB_DELAY_MS", "a number >= 0"),
    ({"RERANKER_BROKER_URL": "gateway:5555"}, "RERANKER_BROKER_URL", "a ZeroMQ endpoint"),
    ({"RERANKER_CORS_ORIGINS": " , "}, "RERANKER_CORS_ORIGINS", "a comma-separated list"),
    ({"RERANKER_MAX_LENGTH": "4"}, "RERANKER_MAX_LENGTH", "an integer >= 8"),
])
def test_bad_values_name_the_variable_and_the_form(env, name, form):
    with pytest.raises(SettingsError) as err:
        Settings.load(env, dotenv=None)
    message = str(err.value)
    assert message.startswith(f"{name}={env[name]!r} is invalid: expected {form}") and "\n" not in message


def test_dotenv_is_read_and_environment_wins(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("NUM_THREADS=4\nPORT=8400\nRERANKER_MODEL=\nWORKER_REPLICAS=3\n")
    s = Settings.load({"PORT": "8500", "RERANKER_BATCH_SIZE": ""}, dotenv=dotenv)
    assert s.num_threads == 4 and s.port == 8500
    # Empty means the default (compose writes ${VAR:-}); other programs' variables are left alone.
    assert s.model == DEFAULT_MODEL and s.batch_size == 32


def test_flag_wins_over_environment_over_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=8300\nRERANKER_MAX_QUEUED=7\nWEB_CONCURRENCY=3\n")
    s = Settings.load({"PORT": "8500", "RERANKER_MAX_QUEUED": "9"}, dotenv=dotenv, service="gateway",
                      argv=["--port", "8400", "--cors-origins", "https://a,https://b"])
    assert (s.port, s.max_queued, s.web_concurrency) == (8400, 9, 3)
    assert s.cors_origins == ("https://a", "https://b")
    assert s.frontend_url.endswith("reranker-8400.ipc")


def test_a_service_takes_the_flags_of_what_it_reads_only():
    gateway = {o.name for o in options("gateway")}
    worker = {o.name for o in options("worker")}
    assert {"port", "workers_bind", "max_retries", "heartbeat_interval"} <= gateway  # the broker runs with it
    assert {"model", "num_threads", "heartbeat_interval", "health_file"} <= worker
    assert "model" not in gateway and "port" not in worker
    assert Settings.load({}, dotenv=None, service="worker", argv=["--model", "/m"]).model == "/m"
    with pytest.raises(SettingsError, match=r"^command line: unrecognized arguments: --model /m$"):
        Settings.load({}, dotenv=None, service="gateway", argv=["--model", "/m"])


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port='70000' is invalid: expected an integer in 1..65535"),
    (["--request-timeout", "soon"], "--request-timeout='soon' is invalid: expected a number > 0"),
    (["--port"], "command line: argument --port: expected one argument"),
])
def test_bad_flags_name_the_flag(argv, message):
    with pytest.raises(SettingsError) as err:
        Settings.load({"PORT": "9000"}, dotenv=None, service="gateway", argv=argv)
    assert str(err.value) == message


def test_help_lists_each_option_with_its_variable_and_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse's width: one line per option
    with pytest.raises(SystemExit) as done:
        Settings.load({}, dotenv=None, service="worker", argv=["--help"])
    assert done.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for o in options("worker"):
        assert f"{o.flag} {o.form.metavar} {o.help} [env {o.env}, default {o.default}]" in text, o.flag
    assert "--port" not in text


def test_load_or_exit_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as done:
        load_or_exit("worker", ["--num-threads", "many"], environ={}, dotenv=None)
    assert done.value.code == 2
    assert capsys.readouterr().err == "configuration error: --num-threads='many' is invalid: expected an integer >= 1\n"
    assert load_or_exit("worker", [], environ={"NUM_THREADS": "2"}, dotenv=None).num_threads == 2


def test_settings_built_directly_read_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("RERANKER_MODEL=/from/dotenv\n")
    s = Settings(model="/m", num_threads=1)
    assert (s.port, s.model, s.num_threads) == (8300, "/m", 1)
    with pytest.raises(ValueError, match="modle"):
        Settings(modle="/m")  # a misspelt name is an error, not a silent default


def test_settings_are_frozen_hashable_and_picklable():
    s = Settings.load({"NUM_THREADS": "3", "RERANKER_CORS_ORIGINS": "a,b"}, dotenv=None)
    with pytest.raises(ValueError):
        s.port = 1
    assert pickle.loads(pickle.dumps(s)) == s  # the broker process gets its settings pickled
    assert hash(s) == hash(Settings.load({"NUM_THREADS": "3", "RERANKER_CORS_ORIGINS": "a,b"}, dotenv=None))


def test_each_variable_and_flag_is_declared_once_with_its_readers():
    opts = options()
    assert len({o.env for o in opts}) == len({o.flag for o in opts}) == len(opts)
    parts = {p for ps in SERVICES.values() for p in ps}
    for o in opts:
        assert o.read_by and set(o.read_by) <= parts, o.env
    assert {o.name for o in opts} == set(Settings.model_fields)


def test_readme_table_is_the_generated_one():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert markdown_table() in readme, "regenerate with: python -m shared.settings --markdown"


def test_no_environment_read_at_import():
    import ast
    root = Path(__file__).parent.parent
    for path in [*root.glob("shared/*.py"), *root.glob("gateway/*.py"), *root.glob("worker/*.py")]:
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level statements only
            src = ast.unparse(node)
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                assert not re.search(r"os\.environ|getenv", src), f"{path.name}: {src[:80]}"
