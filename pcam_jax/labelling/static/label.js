// The labelling page of `pcam-jax label` (pcam_jax/labelling/app.py serves it and the JSON it reads).
// Image coordinates are COCO's: x right, y down, in the image's pixels. Every change of an image's
// shapes or status is PUT to /api/labels/<index> at once; the server writes the COCO file.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("view"), ctx = canvas.getContext("2d");
  const HANDLE = 6;  // vertex handle half-size, screen pixels
  const st = {
    items: [], index: 0, progress: null, hasSuggestion: false,
    tool: "box", selected: -1, drawing: null, drag: null,
    view: { scale: 1, tx: 0, ty: 0 }, window: 255, level: 128, showMap: false,
    image: null, gray: null, windowed: document.createElement("canvas"), map: null,
    history: {}, space: false, saving: Promise.resolve(),
  };
  const item = () => st.items[st.index];
  const clone = (x) => JSON.parse(JSON.stringify(x));
  const round2 = (v) => Math.round(v * 100) / 100;

  function message(text, error = false) {
    $("message").textContent = text;
    $("message").className = error ? "error" : "";
  }

  // ---------------------------------------------------------------- server
  async function load() {
    const state = await (await fetch("/api/state")).json();
    st.items = state.items;
    st.progress = state.progress;
    st.hasSuggestion = state.suggestion;
    $("suggestion").disabled = !state.suggestion;
    if (!state.suggestion) $("suggestion").parentElement.title = "no run given (--workdir): no model map";
    const first = st.items.findIndex((it) => it.status === null);
    await show(first >= 0 ? first : 0);
  }

  function save() {  // the current image's status and shapes; saves run one after another
    const it = item(), index = st.index;
    const body = JSON.stringify({ status: it.status, shapes: it.shapes });
    st.saving = st.saving.then(async () => {
      const response = await fetch(`/api/labels/${index}`, {
        method: "PUT", headers: { "Content-Type": "application/json" }, body });
      const answer = await response.json();
      if (!response.ok) { message(answer.error || response.statusText, true); return; }
      Object.assign(st.items[index], { status: answer.item.status, shapes: answer.item.shapes });
      st.progress = answer.progress;
      message(`saved ${new Date().toLocaleTimeString()}`);
      header();
    }).catch((e) => message(`not saved: ${e}`, true));
    return st.saving;
  }

  // ---------------------------------------------------------------- history (undo / redo)
  function history() {
    if (!st.history[st.index]) st.history[st.index] = { undo: [], redo: [] };
    return st.history[st.index];
  }
  function change(mutate) {  // every edit goes through here: snapshot, mutate, save
    const it = item();
    history().undo.push(clone({ status: it.status, shapes: it.shapes }));
    history().redo = [];
    mutate(it);
    if (it.shapes.length && it.status !== "labelled") it.status = "labelled";
    if (!it.shapes.length && it.status === "labelled") it.status = null;
    draw(); header();
    return save();
  }
  function undoRedo(from, to) {
    const h = history();
    if (!h[from].length) return;
    const it = item();
    h[to].push(clone({ status: it.status, shapes: it.shapes }));
    Object.assign(it, h[from].pop());
    st.selected = -1; st.drawing = null;
    draw(); header(); save();
  }

  // ---------------------------------------------------------------- image, window/level, view
  async function show(index) {
    if (index < 0 || index >= st.items.length) return;
    await st.saving;
    st.index = index; st.selected = -1; st.drawing = null; st.map = null;
    const image = new Image();
    image.src = `/image/${index}.png`;
    await image.decode();
    st.image = image;
    const c = document.createElement("canvas");
    c.width = image.width; c.height = image.height;
    const g = c.getContext("2d");
    g.drawImage(image, 0, 0);
    st.gray = g.getImageData(0, 0, image.width, image.height);
    st.windowed.width = image.width; st.windowed.height = image.height;
    applyWindow(); fit();
    if (st.showMap) loadMap();
    header(); draw();
  }
  function applyWindow() {  // grey value v -> (v - (level - window/2)) / window, clipped
    const lut = new Uint8ClampedArray(256), low = st.level - st.window / 2;
    for (let v = 0; v < 256; v++) lut[v] = Math.round(((v - low) / st.window) * 255);
    const src = st.gray.data, out = new ImageData(st.gray.width, st.gray.height), dst = out.data;
    for (let i = 0; i < src.length; i += 4) {
      const v = lut[src[i]];
      dst[i] = dst[i + 1] = dst[i + 2] = v; dst[i + 3] = 255;
    }
    st.windowed.getContext("2d").putImageData(out, 0, 0);
  }
  function setWindow(window, level) {
    st.window = Math.min(255, Math.max(1, Math.round(window)));
    st.level = Math.min(255, Math.max(0, Math.round(level)));
    $("window").value = st.window; $("level").value = st.level;
    applyWindow(); draw();
  }
  function fit() {
    resize();
    const s = Math.min(canvas.width / st.image.width, canvas.height / st.image.height) * 0.95;
    st.view = { scale: s, tx: (canvas.width - s * st.image.width) / 2, ty: (canvas.height - s * st.image.height) / 2 };
  }
  function resize() { canvas.width = canvas.clientWidth; canvas.height = canvas.clientHeight; }
  function zoom(factor, cx, cy) {
    const v = st.view;
    v.tx = cx - (cx - v.tx) * factor; v.ty = cy - (cy - v.ty) * factor; v.scale *= factor;
    draw();
  }
  const toScreen = (x, y) => [x * st.view.scale + st.view.tx, y * st.view.scale + st.view.ty];
  function toImage(sx, sy, clamp = true) {
    let x = (sx - st.view.tx) / st.view.scale, y = (sy - st.view.ty) / st.view.scale;
    if (clamp) { x = Math.min(st.image.width, Math.max(0, x)); y = Math.min(st.image.height, Math.max(0, y)); }
    return [round2(x), round2(y)];
  }
  function loadMap() {
    if (!st.hasSuggestion || st.map) return;
    const index = st.index, map = new Image();
    map.onload = () => { if (st.index === index) { st.map = map; draw(); message("model map: a suggestion, not a label"); } };
    map.onerror = () => message("the model map could not be made", true);
    map.src = `/suggestion/${index}.png`;
    message("computing the model map...");
  }

  // ---------------------------------------------------------------- shapes
  function vertices(shape) {  // [[x, y], ...] in image pixels
    if (shape.type === "box") {
      const [x, y, w, h] = shape.bbox;
      return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]];
    }
    const p = [];
    for (let i = 0; i < shape.points.length; i += 2) p.push([shape.points[i], shape.points[i + 1]]);
    return p;
  }
  function setVertex(shape, k, x, y) {
    if (shape.type === "polygon") { shape.points[2 * k] = x; shape.points[2 * k + 1] = y; return; }
    const v = vertices(shape), opposite = v[(k + 2) % 4];
    shape.bbox = [Math.min(x, opposite[0]), Math.min(y, opposite[1]), Math.abs(x - opposite[0]), Math.abs(y - opposite[1])].map(round2);
  }
  function moveShape(shape, dx, dy) {
    const W = st.image.width, H = st.image.height;
    const v = vertices(shape), xs = v.map((p) => p[0]), ys = v.map((p) => p[1]);
    dx = Math.min(W - Math.max(...xs), Math.max(-Math.min(...xs), dx));
    dy = Math.min(H - Math.max(...ys), Math.max(-Math.min(...ys), dy));
    if (shape.type === "box") { shape.bbox[0] = round2(shape.bbox[0] + dx); shape.bbox[1] = round2(shape.bbox[1] + dy); }
    else shape.points = shape.points.map((p, i) => round2(p + (i % 2 ? dy : dx)));
  }
  function inside(shape, x, y) {  // even-odd rule
    const v = vertices(shape);
    let hit = false;
    for (let i = 0, j = v.length - 1; i < v.length; j = i++) {
      if ((v[i][1] > y) !== (v[j][1] > y) && x < v[j][0] + ((y - v[j][1]) * (v[i][0] - v[j][0])) / (v[i][1] - v[j][1])) hit = !hit;
    }
    return hit;
  }
  function handleAt(sx, sy) {  // vertex k of the selected shape under the pointer, or -1
    if (st.selected < 0) return -1;
    return vertices(item().shapes[st.selected]).findIndex(([x, y]) => {
      const [px, py] = toScreen(x, y);
      return Math.abs(px - sx) <= HANDLE && Math.abs(py - sy) <= HANDLE;
    });
  }

  // ---------------------------------------------------------------- drawing
  function path(points, close) {
    ctx.beginPath();
    points.forEach(([x, y], i) => { const [sx, sy] = toScreen(x, y); i ? ctx.lineTo(sx, sy) : ctx.moveTo(sx, sy); });
    if (close) ctx.closePath();
  }
  function draw() {
    if (!st.image) return;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    const v = st.view;
    ctx.imageSmoothingEnabled = v.scale < 2;
    ctx.drawImage(st.windowed, v.tx, v.ty, st.image.width * v.scale, st.image.height * v.scale);
    if (st.showMap && st.map) ctx.drawImage(st.map, v.tx, v.ty, st.image.width * v.scale, st.image.height * v.scale);
    item().shapes.forEach((shape, k) => {
      path(vertices(shape), true);
      ctx.lineWidth = 2; ctx.strokeStyle = k === st.selected ? "#ff0" : "#0f8";
      ctx.fillStyle = k === st.selected ? "rgba(255,255,0,0.15)" : "rgba(0,255,128,0.12)";
      ctx.fill(); ctx.stroke();
      if (k === st.selected) vertices(shape).forEach(([x, y]) => {
        const [sx, sy] = toScreen(x, y);
        ctx.fillStyle = "#ff0"; ctx.fillRect(sx - HANDLE / 2, sy - HANDLE / 2, HANDLE, HANDLE);
      });
    });
    const d = st.drawing;
    if (d) {
      ctx.lineWidth = 1.5; ctx.strokeStyle = "#0cf"; ctx.setLineDash([5, 3]);
      if (d.type === "box") path([[d.x0, d.y0], [d.x1, d.y0], [d.x1, d.y1], [d.x0, d.y1]], true);
      else path(d.cursor ? [...d.points, d.cursor] : d.points, false);
      ctx.stroke(); ctx.setLineDash([]);
      if (d.type === "polygon") d.points.forEach(([x, y]) => { const [sx, sy] = toScreen(x, y); ctx.fillStyle = "#0cf"; ctx.fillRect(sx - 3, sy - 3, 6, 6); });
    }
  }
  function header() {
    const p = st.progress, it = item();
    if (!p || !it) return;
    $("progress").textContent = `${p.done} of ${p.total}`;
    $("position").textContent = `image ${st.index + 1} of ${p.total} (${p.labelled} labelled, ${p.no_lesion} no lesion, ${p.skipped} skipped)`;
    $("path").textContent = it.path;
    $("status").textContent = { labelled: `labelled: ${it.shapes.length} shape(s)`, no_lesion: "no lesion visible", skipped: "skipped" }[it.status] || "not yet labelled";
    for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b.dataset.tool === st.tool);
  }

  // ---------------------------------------------------------------- actions
  function setTool(tool) { st.tool = tool; st.drawing = null; header(); draw(); }
  function closePolygon() {
    const d = st.drawing;
    if (!d || d.type !== "polygon") return;
    if (d.points.length < 3) { message("a polygon needs at least 3 vertices", true); return; }
    st.drawing = null;
    change((it) => { it.shapes.push({ type: "polygon", points: d.points.flat() }); st.selected = it.shapes.length - 1; });
  }
  function deleteSelected() {
    if (st.selected < 0) return;
    const k = st.selected;
    st.selected = -1;
    change((it) => it.shapes.splice(k, 1));
  }
  async function decide(status) {
    if (item().shapes.length) { message(`this image has shapes: delete them before marking it ${status.replace("_", " ")}`, true); return; }
    await change((it) => { it.status = status; });
    next();
  }
  function next() {
    const later = st.items.findIndex((it, i) => i > st.index && it.status === null);
    show(later >= 0 ? later : Math.min(st.index + 1, st.items.length - 1));
  }
  function toggleMap(on) {
    st.showMap = on ?? !st.showMap;
    $("suggestion").checked = st.showMap;
    if (st.showMap) loadMap();
    draw();
  }

  // ---------------------------------------------------------------- mouse
  const local = (e) => { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("wheel", (e) => { e.preventDefault(); const [sx, sy] = local(e); zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2, sx, sy); }, { passive: false });
  canvas.addEventListener("mousedown", (e) => {
    const [sx, sy] = local(e), [x, y] = toImage(sx, sy);
    if (e.button === 2) { st.drag = { kind: "window", sx, sy, window: st.window, level: st.level }; return; }
    if (e.button === 1 || st.space) { st.drag = { kind: "pan", sx, sy, tx: st.view.tx, ty: st.view.ty }; return; }
    if (st.tool === "box") { st.drawing = { type: "box", x0: x, y0: y, x1: x, y1: y }; return; }
    if (st.tool === "polygon") {
      const d = st.drawing || (st.drawing = { type: "polygon", points: [] });
      if (d.points.length >= 3) {
        const [fx, fy] = toScreen(...d.points[0]);
        if (Math.abs(fx - sx) <= HANDLE && Math.abs(fy - sy) <= HANDLE) { closePolygon(); return; }
      }
      d.points.push([x, y]); draw(); return;
    }
    const handle = handleAt(sx, sy);  // edit tool
    if (handle >= 0) { st.drag = { kind: "vertex", k: handle, before: clone(item().shapes) }; return; }
    const [ux, uy] = toImage(sx, sy, false);
    const hit = item().shapes.map((s, k) => k).reverse().find((k) => inside(item().shapes[k], ux, uy));
    if (hit !== undefined) { st.selected = hit; st.drag = { kind: "move", x: ux, y: uy, before: clone(item().shapes) }; draw(); return; }
    st.selected = -1; st.drag = { kind: "pan", sx, sy, tx: st.view.tx, ty: st.view.ty }; draw();
  });
  window.addEventListener("mousemove", (e) => {
    if (!st.image) return;
    const [sx, sy] = local(e), [x, y] = toImage(sx, sy), g = st.drag, d = st.drawing;
    if (d && d.type === "box" && e.buttons & 1) { d.x1 = x; d.y1 = y; draw(); return; }
    if (d && d.type === "polygon") { d.cursor = [x, y]; draw(); }
    if (!g) return;
    if (g.kind === "pan") { st.view.tx = g.tx + sx - g.sx; st.view.ty = g.ty + sy - g.sy; draw(); }
    else if (g.kind === "window") setWindow(g.window + (sx - g.sx), g.level - (sy - g.sy));
    else if (g.kind === "vertex") { setVertex(item().shapes[st.selected], g.k, x, y); g.moved = true; draw(); }
    else if (g.kind === "move") {
      const [ux, uy] = toImage(sx, sy, false);
      moveShape(item().shapes[st.selected], ux - g.x, uy - g.y); g.x = ux; g.y = uy; g.moved = true; draw();
    }
  });
  window.addEventListener("mouseup", () => {
    const d = st.drawing, g = st.drag;
    st.drag = null;
    if (d && d.type === "box") {
      st.drawing = null;
      const x = Math.min(d.x0, d.x1), y = Math.min(d.y0, d.y1), w = Math.abs(d.x1 - d.x0), h = Math.abs(d.y1 - d.y0);
      if (w * st.view.scale < 3 || h * st.view.scale < 3) { draw(); return; }  // a click, not a box
      change((it) => { it.shapes.push({ type: "box", bbox: [x, y, w, h].map(round2) }); st.selected = it.shapes.length - 1; });
      return;
    }
    if (g && (g.kind === "vertex" || g.kind === "move") && g.moved) {
      const after = clone(item().shapes);
      item().shapes = g.before;  // so that the snapshot holds the shapes before the drag
      change((it) => { it.shapes = after; });
    }
  });
  canvas.addEventListener("dblclick", () => { if (st.tool === "polygon" && st.drawing) { st.drawing.points.pop(); closePolygon(); } });

  // ---------------------------------------------------------------- keyboard, buttons
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "checkbox") return;
    const k = e.key, ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && (k === "z" || k === "Z")) { e.preventDefault(); e.shiftKey ? undoRedo("redo", "undo") : undoRedo("undo", "redo"); return; }
    if (ctrl && (k === "y" || k === "Y")) { e.preventDefault(); undoRedo("redo", "undo"); return; }
    if (ctrl) return;
    if (k === " ") { st.space = true; e.preventDefault(); return; }
    if (k === "Escape") { if (!$("help").hidden) $("help").hidden = true; else { st.drawing = null; st.selected = -1; draw(); } return; }
    if (k === "Enter") { if (st.drawing) closePolygon(); else next(); return; }
    if (k === "Backspace" && st.drawing && st.drawing.type === "polygon") { st.drawing.points.pop(); draw(); e.preventDefault(); return; }
    const actions = {
      b: () => setTool("box"), p: () => setTool("polygon"), e: () => setTool("edit"), v: () => setTool("edit"),
      Delete: deleteSelected, Backspace: deleteSelected, n: () => decide("no_lesion"), s: () => decide("skipped"),
      ArrowRight: () => show(st.index + 1), ArrowLeft: () => show(st.index - 1), m: () => toggleMap(),
      r: () => { setWindow(255, 128); fit(); draw(); }, "+": () => zoom(1.25, canvas.width / 2, canvas.height / 2),
      "=": () => zoom(1.25, canvas.width / 2, canvas.height / 2), "-": () => zoom(0.8, canvas.width / 2, canvas.height / 2),
      "?": () => { $("help").hidden = !$("help").hidden; },
    };
    const action = actions[k] || actions[k.toLowerCase()];
    if (action) { e.preventDefault(); action(); }
  });
  document.addEventListener("keyup", (e) => { if (e.key === " ") st.space = false; });
  for (const b of document.querySelectorAll("[data-tool]")) b.onclick = () => setTool(b.dataset.tool);
  $("delete").onclick = deleteSelected;
  $("undo").onclick = () => undoRedo("undo", "redo");
  $("redo").onclick = () => undoRedo("redo", "undo");
  $("no-lesion").onclick = () => decide("no_lesion");
  $("skip").onclick = () => decide("skipped");
  $("prev").onclick = () => show(st.index - 1);
  $("next").onclick = () => show(st.index + 1);
  $("suggestion").onchange = (e) => toggleMap(e.target.checked);
  $("window").oninput = (e) => setWindow(+e.target.value, st.level);
  $("level").oninput = (e) => setWindow(st.window, +e.target.value);
  $("reset").onclick = () => { setWindow(255, 128); fit(); draw(); };
  $("help-button").onclick = () => { $("help").hidden = !$("help").hidden; };
  $("help-close").onclick = () => { $("help").hidden = true; };
  for (const b of document.querySelectorAll("button")) b.addEventListener("mouseup", () => b.blur());  // keys stay on the page
  window.addEventListener("resize", () => { if (st.image) { fit(); draw(); } });

  // For the browser test (tests/test_label_browser.py): where an image point is on the page, and the state.
  window.labeller = {
    clientPoint(x, y) { const r = canvas.getBoundingClientRect(), [sx, sy] = toScreen(x, y); return [r.left + sx, r.top + sy]; },
    state: () => ({ index: st.index, item: clone(item()), progress: clone(st.progress), tool: st.tool, mapShown: !!(st.showMap && st.map) }),
    idle: () => st.saving.then(() => true),
    ready: false,
  };
  load().then(() => { window.labeller.ready = true; }).catch((e) => message(`could not load: ${e}`, true));
})();
