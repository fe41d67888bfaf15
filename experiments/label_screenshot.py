"""docs/label_page.png: the labelling page in headless Chromium on a synthetic run, drawn by script.

    python experiments/label_screenshot.py --workdir RUN [--out docs/label_page.png]

RUN: a trained stages-1-2 run on synthetic data (e.g. a seed of experiments/acquisition_study.py).
Lists 20 images by `tta`, outlines the true lesion of the first two (a box, then a polygon) with
the mouse, turns the model's map on, and saves the window. Needs chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default=str(REPO / "docs" / "label_page.png"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "experiments"))
    from acquisition_study import train_masks
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    from pcam_jax import load

    tmp = pathlib.Path(tempfile.mkdtemp())
    listed, labels = tmp / "selected.csv", tmp / "labels.json"
    subprocess.run([sys.executable, "-m", "pcam_jax.cli", "select", "--workdir", args.workdir, "--n", "20",
                    "--method", "tta", "--out", str(listed)], check=True, cwd=REPO)
    paths = [line.split(",")[0] for line in listed.read_text().splitlines()[1:]]
    masks = train_masks(load(args.workdir, stage=2, which="latest").config)
    server = subprocess.Popen([sys.executable, "-m", "pcam_jax.cli", "label", "--list", str(listed), "--out",
                               str(labels), "--workdir", args.workdir, "--port", "0"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    url = next(m.group(1) for line in server.stdout if (m := re.search(r"open (http://\S+/)", line)))
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,860", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        while not driver.execute_script("return !!(window.labeller && window.labeller.ready)"):
            time.sleep(0.1)
        at = lambda x, y: [int(v) for v in driver.execute_script(f"return labeller.clientPoint({x}, {y})")]  # noqa: E731
        body = driver.find_element("tag name", "body")
        for k, path in enumerate(paths[:2]):
            rows, cols = np.nonzero(masks[path])
            x0, y0, x1, y1 = cols.min() - 2, rows.min() - 2, cols.max() + 3, rows.max() + 3
            actions = ActionBuilder(driver)
            if k == 0:
                body.send_keys("b")
                actions.pointer_action.move_to_location(*at(x0, y0)).pointer_down().move_to_location(*at(x1, y1)).pointer_up()
            else:
                body.send_keys("p")
                cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
                for t in np.linspace(0, 2 * np.pi, 9)[:-1]:
                    actions.pointer_action.move_to_location(*at(cx + rx * np.cos(t), cy + ry * np.sin(t))).click()
            actions.perform()
            if k == 0:
                driver.execute_async_script("labeller.idle().then(arguments[0])")
                body.send_keys("\ue014")  # Right: the next image
                time.sleep(0.5)
        body.send_keys("\ue007")  # Enter closes the polygon
        body.send_keys("m")       # the model's map as a suggestion (the first one compiles the maps program)
        for _ in range(600):
            if driver.execute_script("return labeller.state().mapShown"):
                break
            time.sleep(0.1)
        driver.execute_async_script("labeller.idle().then(arguments[0])")
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
