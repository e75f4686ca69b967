import re
from pathlib import Path

import pytest

from shared.settings import DEFAULT_MODEL, Settings, SettingsError, markdown_table, options


def test_defaults():
    s = Settings.load({}, dotenv=None)
    assert (s.host, s.port, s.model, s.backend, s.precision) == ("0.0.0.0", 8300, DEFAULT_MODEL, "torch", "fp32")
    assert s.workers_bind == "tcp://0.0.0.0:5555" and s.broker_url == "tcp://127.0.0.1:5555"
    assert s.num_threads >= 1
    assert s.frontend_url.endswith("reranker-8300.ipc")


def test_environment_is_parsed():
    s = Settings.load({"NUM_THREADS": " 3 ", "PORT": "9000", "RERANKER_BACKEND": "Stub",
                       "RERANKER_CORS_ORIGINS": "https://a, https://b", "RERANKER_REQUEST_TIMEOUT": "2.5"},
                      dotenv=None)
    assert s.num_threads == 3 and s.port == 9000 and s.backend == "stub"
    assert s.cors_origins == ("https://a", "https://b") and s.request_timeout == 2.5
    assert s.frontend_url.endswith("reranker-9000.ipc")  # computed from the port given


@pytest.mark.parametrize("env, name", [
    ({"NUM_THREADS": "two"}, "NUM_THREADS"),
    ({"NUM_THREADS": "0"}, "NUM_THREADS"),
    ({"PORT": "70000"}, "PORT"),
    ({"RERANKER_BACKEND": "tensorflow"}, "RERANKER_BACKEND"),
    ({"RERANKER_REQUEST_TIMEOUT": "-1"}, "RERANKER_REQUEST_TIMEOUT"),
    ({"RERANKER_REQUEST_TIMEOUT": "nan"}, "RERANKER_REQUEST_TIMEOUT"),
    ({"RERANKER_BROKER_URL": "gateway:5555"}, "RERANKER_BROKER_URL"),
])
def test_bad_values_name_the_variable_and_the_form(env, name):
    with pytest.raises(SettingsError) as err:
        Settings.load(env, dotenv=None)
    message = str(err.value)
    assert message.startswith(name + "=") and "expected" in message and "\n" not in message


def test_dotenv_is_read_and_environment_wins(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("NUM_THREADS=4\nPORT=8400\n")
    s = Settings.load({"PORT": "8500"}, dotenv=dotenv)
    assert s.num_threads == 4 and s.port == 8500


def test_as_env_rebuilds_the_same_settings():
    s = Settings.load({"NUM_THREADS": "3", "RERANKER_CORS_ORIGINS": "a,b", "RERANKER_MAX_LENGTH": "128"}, dotenv=None)
    assert Settings.load(s.as_env(), dotenv=None) == s


def test_each_variable_is_declared_once():
    names = [f.metadata["env"] for f in options()]
    assert len(names) == len(set(names))


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
