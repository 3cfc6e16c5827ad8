// The figure of "Try it" (docs/try.md). It draws; maml.js computes. It holds the task,
// the controls and two SVG plots, MAML's and the pretrained baseline's. The networks
// come from maml-run.json, which machinery/site_try.py writes beside this file when the
// site is built, from the committed run.
(function () {
  "use strict";
  const HERE = document.currentScript.src; // maml-run.json lies beside this file
  const X_RANGE = [-5, 5]; // maml.py's X_RANGE: where tasks are sampled
  const PHASE_RANGE = [0, Math.PI]; // maml.py's PHASE_RANGE
  const Y_RANGE = [-6, 6]; // what the plots show
  const MOST_STEPS = 10;
  const MOST_K = 10;
  const SVG = "http://www.w3.org/2000/svg";
  const VIEW = { w: 400, h: 250, left: 30, right: 8, top: 8, bottom: 22 };
  const WIDTH = VIEW.w - VIEW.left - VIEW.right; // of the plotting area
  const HEIGHT = VIEW.h - VIEW.top - VIEW.bottom;

  function linspace(a, b, n) {
    return Array.from({ length: n }, (_, i) => a + ((b - a) * i) / (n - 1));
  }
  const CURVE_X = linspace(...X_RANGE, 201); // where the curves are drawn
  const TEST_X = linspace(...X_RANGE, 100); // experiment.py's test grid, for the MSE

  // A small seeded generator (mulberry32): the same first task on every load.
  function generator(seed) {
    return function () {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  // A new element (an SVG one with ns = SVG) with these attributes, put inside parent.
  function el(name, attrs, parent, ns) {
    const node = ns ? document.createElementNS(ns, name) : document.createElement(name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (parent) parent.appendChild(node);
    return node;
  }

  // From the task's (x, y) to the plot's coordinates, and back.
  const sx = (x) => VIEW.left + ((x - X_RANGE[0]) / (X_RANGE[1] - X_RANGE[0])) * WIDTH;
  const sy = (y) => VIEW.top + ((Y_RANGE[1] - y) / (Y_RANGE[1] - Y_RANGE[0])) * HEIGHT;
  const tx = (u) => X_RANGE[0] + ((u - VIEW.left) / WIDTH) * (X_RANGE[1] - X_RANGE[0]);
  const ty = (v) => Y_RANGE[1] - ((v - VIEW.top) / HEIGHT) * (Y_RANGE[1] - Y_RANGE[0]);
  const clamp = (v, [lo, hi]) => Math.min(hi, Math.max(lo, v));

  // An SVG path through the points (xs[i], ys[i]); what leaves the plot is clipped.
  function pathOf(xs, ys) {
    const y = (v) => sy(clamp(v, [Y_RANGE[0] - 1, Y_RANGE[1] + 1])).toFixed(1);
    return xs.map((x, i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${y(ys[i])}`).join("");
  }

  // One plot: a title, the MSE, the grid, the curves (true, before, after n steps) and
  // a group for the support points.
  function plot(parent, id) {
    const box = el("div", { class: `maml-try__panel ${id}` }, parent);
    const title = el("div", { class: "maml-try__title" }, box);
    const mse = el("div", { class: "maml-try__mse", "aria-live": "polite" }, box);
    const svg = el("svg", { viewBox: `0 0 ${VIEW.w} ${VIEW.h}`, id }, box, SVG);
    const clip = el("clipPath", { id: `${id}-clip` }, el("defs", {}, svg, SVG), SVG);
    el("rect", { x: VIEW.left, y: VIEW.top, width: WIDTH, height: HEIGHT }, clip, SVG);
    const [left, right, bottom, top] = [sx(X_RANGE[0]), sx(X_RANGE[1]),
                                        sy(Y_RANGE[0]), sy(Y_RANGE[1])];
    for (let v = -4; v <= 4; v += 2) {
      const across = { class: "grid", x1: sx(v), x2: sx(v), y1: bottom, y2: top };
      el("line", across, svg, SVG);
      const along = { class: "grid", x1: left, x2: right, y1: sy(v), y2: sy(v) };
      el("line", along, svg, SVG);
      const below = { class: "tick", x: sx(v), y: VIEW.h - 6, "text-anchor": "middle" };
      el("text", below, svg, SVG).textContent = v;
      const beside = { class: "tick", x: left - 4, y: sy(v) + 4, "text-anchor": "end" };
      el("text", beside, svg, SVG).textContent = v;
    }
    const curves = el("g", { "clip-path": `url(#${id}-clip)` }, svg, SVG);
    const path = (name) => el("path", { class: name }, curves, SVG);
    return { svg, title, mse, truth: path("truth"), before: path("before"),
             after: path("after"), points: el("g", { class: "points" }, svg, SVG) };
  }

  // The task the reader sees: a sinusoid, MOST_K support points (the first K in use),
  // and n.
  function newState() {
    const rand = generator(2017);
    const state = { amp: 2.5, phase: 1.0, k: 5, n: 1, xs: [], ys: [] };
    state.truth = (x) => state.amp * Math.sin(x + state.phase); // A sin(x + phase)
    state.draw = (range) => range[0] + (range[1] - range[0]) * rand();
    state.place = () => {
      state.xs = Array.from({ length: MOST_K }, () => state.draw(X_RANGE));
      state.ys = state.xs.map(state.truth);
    };
    state.place();
    return state;
  }

  // A labelled range input; show(value) is the text beside it; changed(value) on input.
  function slider(parent, label, [min, max, step], value, show, changed) {
    const wrap = el("label", { class: "maml-try__control" }, parent);
    el("span", {}, wrap).textContent = label;
    const input = el("input", { type: "range", min, max, step, value }, wrap);
    const out = el("output", {}, wrap);
    out.textContent = show(value);
    input.addEventListener("input", () => {
      out.textContent = show(Number(input.value));
      changed(Number(input.value));
    });
    return input;
  }

  // The controls: the sinusoid's amplitude and phase (which put the points back on it),
  // n, K, and "new task". update() redraws.
  function controls(root, state, run, update) {
    const box = el("div", { class: "maml-try__controls" }, root);
    const task = (amp, phase) => {
      state.amp = amp;
      state.phase = phase;
      state.ys = state.xs.map(state.truth);
      update();
    };
    const amp = slider(box, "amplitude A", [...run.amp_range, 0.1], state.amp,
                       (v) => v.toFixed(1), (v) => task(v, state.phase));
    const phases = [PHASE_RANGE[0], PHASE_RANGE[1].toFixed(2), 0.01];
    const phase = slider(box, "phase", phases, state.phase, (v) => v.toFixed(2),
                         (v) => task(state.amp, v));
    slider(box, "inner steps n", [0, MOST_STEPS, 1], state.n, String, (v) => {
      state.n = v;
      update();
    });
    const kBox = el("fieldset", { class: "maml-try__control" }, box);
    el("legend", {}, kBox).textContent = "support points K";
    for (const k of [5, 10]) {
      const label = el("label", {}, kBox);
      const input = el("input", { type: "radio", name: "maml-try-k", value: k }, label);
      input.checked = k === state.k;
      input.addEventListener("change", () => {
        state.k = k;
        update();
      });
      label.append(` ${k}`);
    }
    const fresh = el("button", { type: "button", class: "md-button" }, box);
    fresh.textContent = "new task";
    fresh.addEventListener("click", () => { // a new sinusoid, and new points on it
      amp.value = state.draw(run.amp_range).toFixed(1);
      phase.value = state.draw(PHASE_RANGE).toFixed(2);
      state.place();
      [amp, phase].forEach((input) => input.dispatchEvent(new Event("input")));
    });
  }

  // Where a pointer event falls, as the task's (x, y), kept within the plot.
  function pointerAt(svg, event) {
    const at = new DOMPoint(event.clientX, event.clientY)
      .matrixTransform(svg.getScreenCTM().inverse());
    return [clamp(tx(at.x), X_RANGE), clamp(ty(at.y), Y_RANGE)];
  }

  // The support points of one plot: dragged by mouse, pen or touch, or moved by the
  // arrow keys (0.1 a press, 1 with shift). The first plot's points take the focus.
  function points(view, state, update, focusable) {
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1],
                    ArrowDown: [0, -1] };
    return Array.from({ length: MOST_K }, (_, i) => {
      const g = el("g", { class: "point" }, view.points, SVG);
      el("circle", { class: "hit", r: 14 }, g, SVG); // a target a finger can hit
      el("circle", { class: "dot", r: 5 }, g, SVG);
      const move = ([x, y]) => {
        state.xs[i] = clamp(x, X_RANGE);
        state.ys[i] = clamp(y, Y_RANGE);
        update();
      };
      if (focusable) {
        g.setAttribute("tabindex", 0);
        g.setAttribute("role", "button");
        g.setAttribute("aria-roledescription", "movable point");
      }
      // A finger on a point drags it, not the page: touch-action, in the stylesheet,
      // is ignored inside an SVG by some browsers (Chromium among them).
      g.addEventListener("touchstart", (event) => event.preventDefault(),
                         { passive: false });
      g.addEventListener("pointerdown", (event) => {
        g.setPointerCapture(event.pointerId);
        event.preventDefault();
      });
      g.addEventListener("pointermove", (event) => {
        if (g.hasPointerCapture(event.pointerId)) move(pointerAt(view.svg, event));
      });
      g.addEventListener("keydown", (event) => {
        if (!(event.key in moves)) return;
        event.preventDefault();
        const [dx, dy] = moves[event.key].map((d) => d * (event.shiftKey ? 1 : 0.1));
        move([state.xs[i] + dx, state.ys[i] + dy]);
      });
      return g;
    });
  }

  // The mean squared error against the true sinusoid on experiment.py's test grid.
  function testMse(params, state) {
    return window.maml.loss(params, TEST_X, TEST_X.map(state.truth));
  }

  // One model's plot: adapt n steps on the K support points, then redraw.
  function render(model, state) {
    const xs = state.xs.slice(0, state.k);
    const ys = state.ys.slice(0, state.k);
    const alpha = model.alpha(state.k);
    let adapted = model.params;
    for (let i = 0; i < state.n; i++) {
      adapted = window.maml.inner_update(adapted, xs, ys, alpha);
    }
    const { view, params } = model;
    view.title.textContent = model.title(alpha);
    view.svg.setAttribute("aria-label", `${model.title(alpha)}: the true sinusoid, ` +
      `the network before adapting and after ${state.n} inner steps`);
    const curve = (p) => pathOf(CURVE_X, window.maml.net_apply(p, CURVE_X));
    view.truth.setAttribute("d", pathOf(CURVE_X, CURVE_X.map(state.truth)));
    model.beforePath = model.beforePath || curve(params); // the same for every task
    view.before.setAttribute("d", model.beforePath);
    view.after.setAttribute("d", curve(adapted));
    view.mse.textContent = `MSE after ${state.n} step${state.n === 1 ? "" : "s"}: ` +
      `${testMse(adapted, state).toFixed(3)} ` +
      `(before adapting: ${testMse(params, state).toFixed(3)})`;
    model.dots.forEach((g, i) => {
      g.style.display = i < state.k ? "" : "none";
      g.setAttribute("transform", `translate(${sx(state.xs[i])},${sy(state.ys[i])})`);
      const at = `x ${state.xs[i].toFixed(1)}, y ${state.ys[i].toFixed(1)}`;
      g.setAttribute("aria-label", `support point ${i + 1}, at ${at}`);
    });
  }

  // The figure inside root, for the run that maml-run.json holds.
  function build(root, run) {
    root.textContent = "";
    const state = newState();
    const models = [];
    let pending = false; // one redraw per animation frame, however many events come
    const update = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        models.forEach((model) => render(model, state));
      });
    };
    controls(root, state, run, update);
    el("div", { class: "maml-try__legend" }, root).innerHTML =
      '<span class="key truth"></span>true sinusoid ' +
      '<span class="key before"></span>before adapting ' +
      '<span class="key after"></span>after n inner steps ' +
      '<span class="key point"></span>support points: drag them, or Tab to one and ' +
      "press the arrow keys";
    const panels = el("div", { class: "maml-try__panels" }, root);
    models.push(
      { params: run.MAML, alpha: () => run.alpha, title: (a) => `MAML, α = ${a}`,
        view: plot(panels, "maml-try-maml") },
      { params: run.pretrained, alpha: (k) => run.step_sizes[k],
        title: (a) => `pretrained, tuned step size ${a}`,
        view: plot(panels, "maml-try-pretrained") });
    models.forEach((model, i) => (model.dots = points(model.view, state, update, !i)));
    models.forEach((model) => render(model, state));
  }

  window.addEventListener("DOMContentLoaded", () => {
    const root = document.getElementById("maml-try");
    if (!root) return;
    fetch(new URL("maml-run.json", HERE))
      .then((response) => {
        if (!response.ok) throw new Error(`maml-run.json: HTTP ${response.status}`);
        return response.json();
      })
      .then((run) => build(root, run))
      .catch((error) => {
        root.textContent = `The figure could not load its networks: ${error.message}`;
        console.error(error);
      });
  });
})();
