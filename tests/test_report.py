"""The analysis scripts on the tiny study's cubes, and the Snakemake HTML report in Chromium."""

import json
import os
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import REPO, run

pytestmark = pytest.mark.workflow
ANALYSIS = REPO / "workflow" / "analysis"

def analysis(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run workflow/analysis/<script> with the test interpreter."""
    return subprocess.run([sys.executable, str(ANALYSIS / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_sharpness_vs_mls_writes_a_figure_next_to_the_cube(snakemake_project):
    result = analysis("sharpness_vs_mls.py", "--results", "results/tiny", cwd=snakemake_project)
    assert result.returncode == 0, result.stderr
    image = plt.imread(snakemake_project / "results/tiny/figures/sharpness_vs_mls.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10  # not blank


def test_summary_number_matches_summary_json_and_fails_on_a_mismatch(snakemake_project,
                                                                     tmp_path):
    results = snakemake_project / "results/tiny"
    result = analysis("summary_number.py", "--results", "results/tiny", cwd=snakemake_project)
    assert result.returncode == 0, result.stdout + result.stderr
    from_cube, from_summary = map(float, re.findall(r":\s+(\S+)\n", result.stdout))
    summary = json.loads((results / "summary.json").read_text())
    expected = summary["correlation_across_runs"]["sharpness~mls"]["pearson"]["estimate"]
    assert from_summary == expected
    assert from_cube == pytest.approx(expected, rel=1e-9)

    shutil.copy(results / "cube.nc", tmp_path / "cube.nc")
    summary["correlation_across_runs"]["sharpness~mls"]["pearson"]["estimate"] = expected * 0.99
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    tampered = analysis("summary_number.py", "--results", str(tmp_path), cwd=tmp_path)
    assert tampered.returncode == 1 and "DIFFER" in tampered.stdout


def test_verdict_flips_counts_flips_and_measures_the_rounding(tmp_path):
    """Two summaries: one verdict flips; the largest move of an estimate or CI end and the
    largest ratio of Holm p-values are read off the claims both tested, the ratio where
    neither p is capped at 1 (claim e's 1.0 against 0.1 does not count)."""
    def claim(verdict, estimate, low, high, p):
        return {"verdict": verdict, "estimate": estimate, "ci_low": low, "ci_high": high,
                "p_holm": p}

    first = {"a": claim("supported", 0.5, 0.3, 0.7, 0.04),
             "b": claim("inconclusive", 0.1, -0.2, 0.4, 0.5),
             "c": claim("supported", 0.0, 0.0, 0.001, None),             # a bound: no p
             "d": claim("not tested", None, None, None, None),
             "e": claim("inconclusive", 0.1, -0.1, 0.3, 1.0)}               # Holm-capped p
    second = {"e": claim("inconclusive", 0.12, -0.08, 0.32, 0.1),
              "a": claim("inconclusive", 0.45, 0.28, 0.72, 0.06),
              "b": claim("inconclusive", 0.1, -0.1, 0.4, 0.25),
              "c": claim("supported", 0.0, 0.0, 0.002, None),
              "d": claim("not tested", None, None, None, None)}
    for name, claims in (("first", first), ("second", second)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"claims": claims}))
    result = analysis("verdict_flips.py", "first.json", "second.json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("1 of 4 tested verdicts differ\n")
    assert "estimate: 0.1, p_factor: 2}" in result.stdout       # b's CI end; b's p 0.5 / 0.25
    assert "| a | supported (τ 0.5, p 0.04) | inconclusive (τ 0.45, p 0.06) |" in result.stdout
    same = analysis("verdict_flips.py", "first.json", "first.json", cwd=tmp_path)
    assert same.returncode == 0 and same.stdout.startswith("0 of 4 tested verdicts differ")
    assert "estimate: 0, p_factor: 1}" in same.stdout


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]

# Evaluated in the loaded report page: decodes every embedded base64 image, then shows each image
# result as the report's own eye button does (app.setView) and decodes every <img> then on the page.
IMAGE_CHECK = r"""(async () => {
  const name = src => (src.match(/filename=([^;,]+)/) || [null, src.slice(0, 30)])[1];
  const width = img => img.decode().then(() => img.naturalWidth, () => 0);
  const check = {url: location.href, embedded: [], shown: []};
  const page = document.documentElement.innerHTML;
  for (const src of page.match(/data:image\/[\w+.-]+;[^"'\s]*base64,[\w+\/=]+/g) || []) {
    const img = new Image();
    img.src = src;
    check.embedded.push({name: name(src), width: await width(img)});
  }
  for (const [path, entry] of Object.entries(results)) {
    if (!entry.mime_type.startsWith("image/")) continue;
    ReactDOM.flushSync(() => app.setView({content: "img", contentPath: entry.data_uri,
                                          resultPath: path}));
    for (const img of document.images)
      check.shown.push({figure: entry.name, name: name(img.src), width: await width(img)});
  }
  return check;
})()"""


def evaluate_in_chromium(browser: str, url: str, expression: str, profile: Path):
    """The value of a JavaScript expression (awaited) in ``url`` loaded in headless Chromium.

    Speaks the Chrome DevTools Protocol over --remote-debugging-pipe: JSON messages ending in
    NUL, which the browser reads from its fd 3 and writes to its fd 4.
    """
    commands, to_browser = os.pipe()
    from_browser, replies = os.pipe()

    def onto_fds_3_and_4():  # safe in this order, as 3 <= commands < replies
        for fd, target in ((commands, 3), (replies, 4)):
            os.dup2(fd, target)
            os.set_inheritable(target, True)   # dup2 onto itself keeps close-on-exec

    process = subprocess.Popen([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                "--remote-debugging-pipe"], preexec_fn=onto_fds_3_and_4,
                               close_fds=False, stderr=subprocess.DEVNULL)
    os.close(commands)
    os.close(replies)
    buffer, sent = b"", 0

    def call(method: str, session: str | None = None, **params) -> dict:
        nonlocal buffer, sent
        sent += 1
        message = {"id": sent, "method": method, "params": params}
        os.write(to_browser, json.dumps(message | ({"sessionId": session} if session else {}))
                 .encode() + b"\0")
        while True:
            while b"\0" not in buffer:
                assert select.select([from_browser], [], [], 120)[0], f"{method}: no reply"
                chunk = os.read(from_browser, 1 << 16)
                assert chunk, f"{method}: Chromium closed the pipe"
                buffer += chunk
            reply, buffer = buffer.split(b"\0", 1)
            reply = json.loads(reply)
            if reply.get("id") == sent:        # anything else is an event
                assert "error" not in reply, reply["error"]
                return reply["result"]

    try:
        target = call("Target.createTarget", url="about:blank")["targetId"]
        session = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        call("Page.navigate", session, url=url)       # replies once the navigation commits
        call("Runtime.evaluate", session, awaitPromise=True, expression="new Promise(loaded =>"
             " document.readyState === 'complete' ? loaded() : onload = loaded)")
        result = call("Runtime.evaluate", session, expression=expression, awaitPromise=True,
                      returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"]["value"]
    finally:
        process.kill()
        process.wait()
        os.close(to_browser)
        os.close(from_browser)


def chromium() -> str:
    """The Chromium binary; a failure in CI (where .ci/run installs it), else a skip."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it with apt-get)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI requires it")
    return path


def test_every_image_of_the_html_report_renders_in_chromium(snakemake_project, tmp_path):
    browser = chromium()
    run(["snakemake", "--report", "report.html"], snakemake_project)
    page = snakemake_project / "report.html"
    check = evaluate_in_chromium(browser, page.as_uri(), IMAGE_CHECK, tmp_path / "profile")
    assert check["url"] == page.as_uri()
    figures = {image["figure"] for image in check["shown"]}
    assert {"trajectories.png", "bounds.png", "correlations.png", "tightness.png",
            "claims.png", "robust_cdf.png"} <= figures
    assert figures <= {image["name"] for image in check["shown"]}     # each one shown as an <img>
    assert figures <= {image["name"] for image in check["embedded"]}
    broken = [image for image in check["embedded"] + check["shown"] if image["width"] == 0]
    assert not broken
