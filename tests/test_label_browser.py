"""End to end in headless Chromium: select, draw two boxes and a polygon, undo and redo, edit a box's
corner, delete a box, reload, check the COCO file against the drawn geometry, train stage 3 from it
(tiny config).

Needs Debian's ``chromium`` and ``chromium-driver`` (`.ci/run` installs them) and the ``selenium``
package (test extra); skips with the reason where one is missing. Selenium drives the system
chromedriver: nothing is downloaded.
"""

import json
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.commands import pcam_jax_command

REPO = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no Chromium here: apt-get install chromium chromium-driver (as .ci/run does)", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("fast_compilation")

# What the test draws on the first image (32x32), in image pixels, on integer coordinates so that
# no edge comes near a pixel centre: the mask is then exact whatever the pointer's rounding.
BOXES = [(4, 5, 12, 14), (2, 20, 8, 30)]                                       # x0, y0, x1, y1
EDITED = (2, 20, 10, 31)    # the second box once its bottom-right corner is dragged from (8, 30)
L_SHAPE = [(18, 18), (28, 18), (28, 22), (22, 22), (22, 28), (18, 28)]
UNDONE_BOX = (24, 2, 30, 8)  # drawn, undone; drawn again, deleted


def expected_mask() -> np.ndarray:
    """Hand-computed: pixels (row i, column j) whose centre lies in a box or in the L."""
    mask = np.zeros((32, 32), np.uint8)
    for x0, y0, x1, y1 in (BOXES[0], EDITED):
        mask[y0:y1, x0:x1] = 1
    mask[18:22, 18:28] = 1   # the L's bar
    mask[22:28, 18:22] = 1   # and its leg
    return mask


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("label_run")
    data = f"--config.data.data_dir={workdir / 'data'}"
    assert pcam_jax_command("train", "--config", "tiny", "--workdir", workdir, "--stages", "1,2", data) == 0
    return workdir, data


def _start_label_server(workdir, listed, labels):
    process = subprocess.Popen(
        [sys.executable, "-m", "pcam_jax.cli", "label", "--list", listed, "--out", labels, "--workdir", workdir,
         "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline, seen = time.time() + 120, []
    while time.time() < deadline and process.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        found = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
        if found:
            return process, found.group(1)
    process.kill()
    raise AssertionError("pcam-jax label did not start:\n" + "".join(seen[-20:]))


def _browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_select_label_in_chromium_reload_and_train_stage_3(run, capsys):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.keys import Keys

    from pcam_jax.data import lesions
    from pcam_jax.training import checkpointing

    workdir, data = run
    listed, labels = workdir / "selected.csv", workdir / "labels.json"
    assert pcam_jax_command("select", "--workdir", workdir, "--n", "3", "--method", "uncertainty", "--out", listed) == 0
    paths = [line.split(",")[0] for line in listed.read_text().splitlines()[1:]]
    assert len(paths) == 3 and all(p.startswith("synthetic/train/") for p in paths)

    server, url = _start_label_server(workdir, listed, labels)
    driver = _browser()
    try:
        def wait_ready():
            for _ in range(200):
                if driver.execute_script("return !!(window.labeller && window.labeller.ready)"):
                    return
                time.sleep(0.05)
            raise AssertionError("the page did not load: " + str(driver.get_log("browser")))

        def state():
            driver.execute_async_script("window.labeller.idle().then(arguments[0])")  # saves done
            return driver.execute_script("return window.labeller.state()")

        def at(x, y):
            return [int(round(v)) for v in driver.execute_script(f"return window.labeller.clientPoint({x}, {y})")]

        def keys(*sequence):
            driver.find_element("tag name", "body").send_keys(*sequence)

        def drag(box):
            actions = ActionBuilder(driver)
            actions.pointer_action.move_to_location(*at(*box[:2])).pointer_down().move_to_location(
                *at(*box[2:])).pointer_up()
            actions.perform()

        def click(x, y):
            actions = ActionBuilder(driver)
            actions.pointer_action.move_to_location(*at(x, y)).click()
            actions.perform()

        driver.get(url)
        wait_ready()
        assert state()["index"] == 0 and driver.find_element("id", "progress").text == "0 of 3"
        keys("b")
        for box in BOXES + [UNDONE_BOX]:
            drag(box)
        keys(Keys.CONTROL, "z")  # the third box goes
        assert len(state()["item"]["shapes"]) == 2
        keys("p")
        for point in L_SHAPE:
            click(*point)
        keys(Keys.ENTER)
        keys(Keys.CONTROL, "z")  # undo the polygon, redo it
        assert [s["type"] for s in state()["item"]["shapes"]] == ["box", "box"]
        keys(Keys.CONTROL, "y")
        assert [s["type"] for s in state()["item"]["shapes"]] == ["box", "box", "polygon"]
        keys("e")  # edit: select the second box, drag its corner
        click(5, 25)
        drag((8, 30, *EDITED[2:]))
        keys("b")
        drag(UNDONE_BOX)
        keys("e")
        click(27, 5)
        keys(Keys.DELETE)
        shapes = state()["item"]["shapes"]
        assert [s["type"] for s in shapes] == ["box", "box", "polygon"]
        assert driver.find_element("id", "progress").text == "1 of 3"

        driver.refresh()  # a reload (or a new tab) resumes at the first undecided image
        wait_ready()
        assert state()["index"] == 1
        keys("n")  # image 2: no lesion visible; the page moves on
        assert state()["index"] == 2 and state()["progress"]["no_lesion"] == 1
        keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)
        assert state()["item"]["shapes"] == shapes  # what the server kept
    finally:
        driver.quit()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert not pathlib.Path(str(labels) + ".lock").exists()

    coco = json.loads(labels.read_text())
    assert [(i["file_name"], i["pcam_status"]) for i in coco["images"]] == [(paths[0], "labelled"), (paths[1], "no_lesion")]
    bboxes = [a["bbox"] for a in coco["annotations"] if not a["segmentation"]]
    np.testing.assert_allclose(bboxes, [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in (BOXES[0], EDITED)], atol=0.1)
    (polygon,) = [a["segmentation"][0] for a in coco["annotations"] if a["segmentation"]]
    np.testing.assert_allclose(polygon, np.ravel(L_SHAPE), atol=0.1)
    masks = lesions.masks_from_coco(labels, {p: (32, 32) for p in paths})
    np.testing.assert_array_equal(masks[paths[0]], expected_mask())

    capsys.readouterr()
    assert pcam_jax_command("train", "--config", "tiny", "--workdir", workdir, "--stages", "3", data,
                            f"--config.stage3.lesion_labels={labels}") == 0
    assert "config.stage3.lesion_labels: 1 labelled train images" in capsys.readouterr().out
    _, _, meta = checkpointing.restore_for_eval(workdir, 3, "latest")
    assert meta["stage"] == 3 and meta["step"] > 0
