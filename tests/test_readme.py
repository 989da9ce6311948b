"""README.md and .ci/run must not drift apart: CI runs exactly the test command the README gives."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python3 -m venv")]


def test_ci_runs_the_readme_test_command():
    readme = _commands((ROOT / "README.md").read_text())
    ci = _commands((ROOT / ".ci" / "run").read_text())
    assert len(ci) == 1 and "pytest" in ci[0]
    assert ci[0] in readme


def test_the_readme_recipe_parses_and_lists_every_step():
    from compress.recipe import parse_recipe
    from compress.steps import list_steps

    text = (ROOT / "README.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    recipe = parse_recipe(block, origin="README.md")
    assert [s.step for s in recipe.steps] == ["prune-structured", "quantize_static_onnx"] and recipe.sensitivity is not None
    assert all(f"`{name}`" in text for name in list_steps())
