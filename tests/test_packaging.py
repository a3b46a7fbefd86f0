"""dpo_lab as an installed package: the wheel holds the package and its configs, and works from any folder.

The wheel test builds a wheel from a copy of the sources, installs it into a fresh virtual environment
(which reuses this environment's installed dependencies through a .pth line: nothing is downloaded, and
this checkout's dpo_lab is not importable there), and runs the console command from an unrelated folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml

from tests.helpers import ROOT, agent_command, cli_env

USER_CONFIGS = ROOT / "docs" / "user_configs"
TINY = [
    "logger=none",
    "eval=none",
    "train.max_steps=2",
    "data.max_train_samples=16",
    "data.max_eval_samples=8",
    "dpo.max_length=128",
]


def test_listed_packages_are_the_package_folders() -> None:
    """pyproject.toml lists the packages (conf/ is mapped in): a new sub-package must be listed too."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        str(p.parent.relative_to(ROOT)).replace(os.sep, ".") for p in (ROOT / "dpo_lab").rglob("__init__.py")
    }
    on_disk |= {
        str(p.parent.relative_to(ROOT)).replace(os.sep, ".") for p in (ROOT / "hydra_plugins").rglob("*.py")
    }
    assert listed == on_disk | {"dpo_lab.conf"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("dpo_lab", "conf", "hydra_plugins"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = dist.glob("dpo_lab-*.whl")
    return built


def test_wheel_holds_the_configs_and_assets(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        f"dpo_lab/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")
    }
    assert shipped and shipped <= names, sorted(shipped - names)[:5]
    assert "dpo_lab/assets/tiny-llama/config.json" in names
    assert any(n.startswith("dpo_lab/assets/finance/") for n in names)
    assert not any(n.startswith(("tests/", "conf/", "benchmarks/")) for n in names)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; its dependencies come from this environment."""
    env_dir = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    target = next(env_dir.glob("lib/python*/site-packages"))
    # this environment's packages, after the new venv's own (plain path: its .pth files, among them the
    # editable install of this checkout, are not processed)
    (target / "_deps_from_dev_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env_dir / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return env_dir


def run_installed(env_dir: Path, args: list[str], cwd: Path, tmp_path: Path, timeout: int = 600):
    env = cli_env(tmp_path)
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_installed_wheel_works_from_any_folder(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    dpo_lab = str(installed / "bin" / "dpo-lab")
    # the package imported is the installed one, not this checkout
    proc = run_installed(
        installed, ["python", "-c", "import dpo_lab; print(dpo_lab.__file__)"], work, tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(installed), proc.stdout

    # composition only
    proc = run_installed(installed, [dpo_lab, "--cfg", "job"], work, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert yaml.safe_load(proc.stdout)["lora"]["r"] == 16

    # dpo_lab's own Hydra launcher plugin is found (Hydra lists the installed hydra_plugins folders)
    proc = run_installed(installed, [dpo_lab, "hydra/launcher=packed", "--cfg", "hydra"], work, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PackedLauncher" in yaml.safe_load(proc.stdout)["hydra"]["launcher"]["_target_"]

    # a 2-step training, its run folder under the folder it was started from
    proc = run_installed(installed, [dpo_lab, *TINY, "hydra.run.dir=run"], work, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((work / "run" / "metrics.json").read_text())["global_step"] == 2

    # the W&B sweep spec's command, as the agent builds it, with the venv's python first on PATH
    spec = yaml.safe_load((ROOT / "sweeps" / "beta_rank_lr.yaml").read_text())
    argv = agent_command(
        spec,
        {"dpo.beta": 0.5, "lora.r": 8, "train.learning_rate": 5e-5, "objective.metric": "rewards/accuracies"},
    )
    proc = run_installed(installed, [*argv, "--cfg", "job"], work, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert yaml.safe_load(proc.stdout)["dpo"]["beta"] == 0.5


@pytest.mark.slow
def test_installed_wheel_with_user_configs_and_a_sweep_report(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    shutil.copytree(USER_CONFIGS, work / "my_configs")
    dpo_lab = str(installed / "bin" / "dpo-lab")
    # the example folder's experiment, its own data preset and a shipped option it extends
    proc = run_installed(
        installed,
        [dpo_lab, "--config-dir", "my_configs", "experiment=quick_ipo", "--cfg", "job"],
        work,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["dpo"]["loss_type"] == ["ipo"] and cfg["dpo"]["beta"] == 0.3
    assert cfg["lora"]["r"] == 4 and cfg["lora"]["alpha"] == 8
    assert cfg["data"]["max_train_samples"] == 32

    # its sweep, 2 jobs of 2 steps, then the report on the sweep folder
    proc = run_installed(
        installed,
        [
            dpo_lab,
            "--config-dir",
            "my_configs",
            "-m",
            "experiment=quick_ipo",
            "sweep=two_betas",
            "hydra.sweep.dir=sweep",
        ],
        work,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (work / "sweep").iterdir() if p.name.isdigit()) == ["0", "1"]
    (work / "sweep" / "results.csv").unlink()  # written by the sweep's callback; the command writes it again
    proc = run_installed(installed, [dpo_lab, "report", "sweep"], work, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (work / "sweep" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and "dpo.beta" in rows[0], rows

    # your own loss in one function (my_losses.py) and your own tracker in one module (my_tracker.py),
    # beside your configs, each selected by one YAML option
    proc = run_installed(
        installed,
        [dpo_lab, "--config-dir", "my_configs", "dpo=margin", "dpo.loss_params.gamma=0.25",
         "hydra.run.dir=margin", *TINY, "logger=jsonl"],
        work,
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((work / "margin" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and math.isfinite(metrics["eval"]["eval_loss"])
    resolved = yaml.safe_load((work / "margin" / "config.yaml").read_text())
    assert resolved["dpo"]["loss_type"] == ["my_losses:margin_dpo"]
    assert resolved["dpo"]["loss_params"] == {"gamma": 0.25}
    events = [json.loads(line) for line in (work / "margin" / "tracker.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1] == {"event": "finish", "exit_code": 0}
    assert any(e["event"] == "log" and "eval/loss" in e for e in events)
    assert any(e["event"] == "summary" and e.get("status") == "completed" for e in events)
    # a misspelt parameter of the function is refused before anything loads, with the key named
    proc = run_installed(
        installed,
        [dpo_lab, "--config-dir", "my_configs", "dpo=margin", "+dpo.loss_params.gama=1"],
        work,
        tmp_path,
    )
    assert proc.returncode == 2 and "dpo.loss_params.gama" in proc.stderr and "gamma" in proc.stderr, (
        proc.stderr
    )


def test_a_user_file_that_shadows_a_shipped_option_is_refused(tmp_path: Path) -> None:
    """Hydra would silently use the shipped data/finance.yaml instead of the user's: refused, one line."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "finance.yaml").write_text("defaults:\n  - base_data\npath: mine.jsonl\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_lab.run", "--config-dir", str(tmp_path), "--cfg", "job"],
        cwd=ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "finance.yaml" in err[0] and "data=finance_mine" in err[0], err


def test_the_packed_launcher_is_found_outside_the_checkout(tmp_path: Path) -> None:
    """This environment's install of the checkout (``pip install -e``, as ``make setup`` does) serves the
    launcher plugin through an import hook that Hydra's plugin listing does not see; run from another folder
    with nothing on PYTHONPATH, ``hydra/launcher=packed`` still composes (dpo_lab.packed.discovery)."""
    env = cli_env(tmp_path)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_lab.run", "hydra/launcher=packed", "--cfg", "hydra"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("PackedLauncher") and launcher["pack_size"] == "auto"
