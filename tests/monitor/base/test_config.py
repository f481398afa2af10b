import re
from pathlib import Path

import pytest

from monitor.base.config import Config, ConfigError, Secret, SecretSource, load_config, parse_config
from monitor.base.config_template import render_config
from monitor.service.cli import main

ROOT = Path(__file__).resolve().parents[3]


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("/etc/specwatch/config.toml"))
    return caught.value.problems


def test_repository_config_is_the_rendered_default() -> None:
    assert (ROOT / "config.toml").read_text(encoding="utf-8") == render_config()


def test_rendered_default_parses_back_to_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(render_config())
    assert load_config(path) == Config().resolve_paths(tmp_path)


def test_every_key_is_documented() -> None:
    lines = render_config().splitlines()
    for index, line in enumerate(lines):
        is_key = line and not line.startswith(("#", "[")) and "=" in line
        if is_key:
            assert lines[index - 1].startswith("#"), f"undocumented key: {line}"


def test_problems_name_their_key_path() -> None:
    problems = problems_of('[intake.sampling]\nrate = 1.5\n[intake.http]\nport = "x"\n')
    assert any(p.startswith("intake.sampling.rate:") for p in problems)
    assert any(p.startswith("intake.http.port:") for p in problems)


def test_unknown_key_is_a_problem() -> None:
    assert problems_of("[storage]\ndatadir = 'x'\n") == [
        "storage.datadir: unknown key (secrets go in *.env or *.file, never inline)"
    ]


def test_training_kind_is_live_or_a_registered_draft_kind() -> None:
    from decoder.drafts import DRAFT_KINDS

    for kind in ["live", *DRAFT_KINDS]:
        config = parse_config(f'[retrain.training]\nkind = "{kind}"\n', Path("/etc/specwatch/config.toml"))
        assert config.retrain.training.kind == kind
    (problem,) = problems_of('[retrain.training]\nkind = "lookahead"\n')
    assert problem.startswith("retrain.training.kind:")
    assert "unknown draft kind 'lookahead'; known kinds: live, draft_model, medusa, eagle, eagle3, mtp" in problem


def test_retrain_kind_argument_is_checked_against_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["retrain", "--now", "--kind", "lookahead"])
    assert exited.value.code == 2
    assert (
        "unknown draft kind 'lookahead'; known kinds: live, draft_model, medusa, eagle, eagle3, mtp"
        in capsys.readouterr().err
    )


def test_toml_syntax_error_is_reported() -> None:
    assert problems_of("[storage\n")[0].startswith("(syntax):")


@pytest.mark.parametrize(
    "text",
    [
        '[alerts.receivers.oncall]\ntype = "slack"\nchannel = "#x"\nbot_token = "xoxb-123"\n',
        '[intake.http]\ntoken = "s3cret"\n',
        '[storage]\ndatabase_url = "postgresql://app:s3cret@db/specwatch"\n',
    ],
)
def test_inline_secrets_are_refused(text: str) -> None:
    problems = problems_of(text)
    assert problems and all("s3cret" not in p and "xoxb-123" not in p for p in problems)


def test_exposed_http_without_token_is_refused() -> None:
    problems = problems_of('[intake.http]\nhost = "0.0.0.0"\ntoken = {}\n')
    assert "not loopback" in problems[0]


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "config.toml"
    path.parent.mkdir()
    path.write_text('[storage]\ndata_dir = "../var"\n[intake.follow]\npaths = ["logs"]\n')
    config = load_config(path)
    assert config.storage.data_dir == tmp_path / "var"
    assert config.intake.follow.paths == [tmp_path / "etc" / "logs"]
    assert config.database_url == f"sqlite:///{tmp_path / 'var' / 'specwatch.db'}"


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SW_TOKEN", "from-env")
    assert SecretSource(env="SW_TOKEN").read() == Secret("from-env")
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file\n")
    secret = SecretSource(file=secret_file).read()
    assert secret is not None and secret.reveal() == "from-file"
    assert "from-file" not in repr(secret) and "from-file" not in str(secret)


def test_config_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "good.toml"
    good.write_text(render_config())
    assert main(["config", "check", "--config", str(good)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[retention]\nsamples_days = 0\n[alerts]\ndefault_receiver = "pager"\n')
    assert main(["config", "check", "--config", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "retention.samples_days:" in err and "unknown receiver(s) pager" in err


def test_config_check_reports_unset_secret_without_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "slack.toml"
    path.write_text(
        '[alerts]\ndefault_receiver = "oncall"\n'
        '[alerts.receivers.oncall]\ntype = "slack"\nchannel = "#oncall"\nbot_token = { env = "SW_TEST_SLACK" }\n'
    )
    monkeypatch.delenv("SW_TEST_SLACK", raising=False)
    assert main(["config", "check", "--config", str(path)]) == 1
    assert "alerts.receivers.oncall.bot_token: environment variable SW_TEST_SLACK is not set" in capsys.readouterr().err
    monkeypatch.setenv("SW_TEST_SLACK", "xoxb-very-secret")
    assert main(["config", "check", "--config", str(path)]) == 0
    out = capsys.readouterr()
    assert "xoxb-very-secret" not in out.out + out.err


def test_config_env_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "env.toml"
    path.write_text("[retention]\nsamples_days = 3\n")
    monkeypatch.setenv("SPECWATCH_CONFIG", str(path))
    assert load_config().retention.samples_days == 3


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app@db/specwatch?password=s3cret",
        "postgresql+psycopg://app@db/specwatch?sslmode=require&PassWord=s3cret",
        "postgresql+psycopg://app@db/specwatch?sslpassword=s3cret",
        "postgresql+psycopg://app@db/specwatch?pass%77ord=s3cret",
        "postgresql+psycopg://app:s3cret@db/specwatch",
    ],
)
def test_a_password_anywhere_in_the_database_url_is_refused(url: str) -> None:
    problems = problems_of(f'[storage]\ndatabase_url = "{url}"\n')
    assert len(problems) == 1 and problems[0].startswith("storage.database_url:") and "password" in problems[0]
    assert "s3cret" not in problems[0]


def test_config_check_masks_the_database_url_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[storage]\ndatabase_url = "postgresql+psycopg://app@db:5432/specwatch?sslmode=require&application_name=sw-4f2a"\n'
    )
    assert main(["config", "check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "postgresql+psycopg://app@db:5432/specwatch?application_name=***&sslmode=***" in out
    assert "require" not in out and "sw-4f2a" not in out


def test_answer_timeout_must_exceed_the_statement_timeout() -> None:
    problems = problems_of("[storage]\nstatement_timeout_s = 60\nanswer_timeout_s = 30\n")
    assert problems == [
        "storage: answer_timeout_s must exceed statement_timeout_s (the server answers a statement it cancels)"
    ]


def test_draft_mtp_names_the_targets_mtp_layers(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[models]\ntarget = "models/target"\ndraft = "mtp"\n')
    config = load_config(path)
    assert config.models.draft == config.models.target == tmp_path / "models" / "target"
    path.write_text('[models]\ndraft = "mtp"\n')
    with pytest.raises(ConfigError, match=re.escape('models.draft = "mtp" reads the MTP layers of models.target')):
        load_config(path)


@pytest.mark.parametrize(
    ("languages", "message"),
    [
        ('["en", "xx"]', "unknown ISO 639-1 code 'xx': lingua knows af, ar, az"),
        ('["en", "zh"]', "'zh' is labelled by the script router"),
        ('["en", "uk"]', "'uk' is labelled by the script router"),
        ('["en", "vi", "vi"]', "listed more than once: vi"),
        ('["vi", "th"]', 'list "en"'),
        ('["en"]', "at least one more, or [] for the script router alone"),
    ],
)
def test_intake_languages_are_checked(languages: str, message: str) -> None:
    (problem,) = problems_of(f"[intake]\nlanguages = {languages}\n")
    assert problem.startswith("intake.languages:") and message in problem


def test_intake_languages_are_lowercased_and_may_be_empty() -> None:
    path = Path("/etc/specwatch/config.toml")
    assert parse_config('[intake]\nlanguages = ["EN", " Vi"]\n', path).intake.languages == ["en", "vi"]
    assert parse_config("[intake]\nlanguages = []\n", path).intake.languages == []


def test_an_external_trainer_command_with_an_unknown_placeholder_is_refused_at_load(tmp_path: Path) -> None:
    from monitor.base.config import EXTERNAL_PLACEHOLDERS

    path = tmp_path / "config.toml"
    path.write_text('[retrain.external]\ncommand = ["train", "--out", "{output_dir}", "{outptu_dir}"]\n')
    with pytest.raises(
        ConfigError, match=r"retrain.external.command: unknown placeholder\(s\) outptu_dir; known: target"
    ):
        load_config(path)
    path.write_text('[retrain.training]\ntrainer = "external"\n')
    with pytest.raises(ConfigError, match=r"needs retrain\.external\.command"):
        load_config(path)
    every = " ".join(f"{{{name}}}" for name in EXTERNAL_PLACEHOLDERS)
    path.write_text(
        f'[retrain.training]\ntrainer = "external"\n[retrain.external]\ncommand = ["t", "{every}", "{{{{x}}}}"]\n'
    )
    assert load_config(path).retrain.external.command[1] == every
