// priorlab's page: interactive colorization (hints, suggestions) and Restore jobs with live progress.
// Plain browser JavaScript, no build step. It only calls the HTTP API this gateway serves (/v1/...).
"use strict";

const $ = (id) => document.getElementById(id);
const DEBOUNCE_MS = 150;
const TOKEN_KEY = "priorlab.token"; // in sessionStorage: this tab only, gone when it closes; never in a URL
const STREAM_RETRIES = 5; // reconnections of a job's event stream in a row before giving up

// --- helpers ---------------------------------------------------------------------------------------

/** fetch() of this gateway's API, with the token (when one is set) as `Authorization: Bearer`. */
function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  return fetch(path, { ...options, headers });
}

/** The server's error message (its JSON `error.message`), or the HTTP status line. */
async function errorOf(response) {
  // 401: the gateway wants a token (none, or not one it knows): point at the field.
  $("token").classList.toggle("needed", response.status === 401);
  try {
    const body = await response.json();
    if (body && body.error) {
      const hint = response.status === 401 ? ": enter your token at the top of the page" : "";
      return `${body.error.message} (${body.error.code}, HTTP ${response.status})${hint}`;
    }
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

function setStatus(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

const hex = (rgb) => "#" + rgb.map((v) => v.toString(16).padStart(2, "0")).join("");
const rgbOf = (color) => [parseInt(color.slice(1, 3), 16), parseInt(color.slice(3, 5), 16), parseInt(color.slice(5, 7), 16)];

/** Image pixel (natural coordinates) of a pointer event on `img`. */
function pixelAt(img, event) {
  const box = img.getBoundingClientRect();
  const x = Math.floor(((event.clientX - box.left) / box.width) * img.naturalWidth);
  const y = Math.floor(((event.clientY - box.top) / box.height) * img.naturalHeight);
  return [Math.min(Math.max(x, 0), img.naturalWidth - 1), Math.min(Math.max(y, 0), img.naturalHeight - 1)];
}

// --- Colorize --------------------------------------------------------------------------------------

const colorize = {
  file: null, // the uploaded photo (a Blob), sent with every request
  hints: [], // {x, y, color: "#rrggbb"}
  models: {},
  controller: null, // aborts the request in flight when a newer one starts
  timer: 0,
  resultUrl: null,
  selected: -1, // the hint the picker edits, or -1 for a new one
  point: null, // [x, y] the picker is for
};

async function loadModels() {
  const select = $("model");
  try {
    const response = await api("/v1/models");
    if (!response.ok) throw new Error(await errorOf(response));
    const body = await response.json();
    for (const model of body.models) {
      colorize.models[model.name] = model;
      const option = new Option(model.hints ? `${model.name} (hints)` : model.name, model.name);
      select.add(option);
    }
    select.value = body.default;
  } catch (error) {
    setStatus($("colorize-status"), `could not list the models: ${error.message}`, true);
  }
  syncTemperature();
}

function syncTemperature() {
  const model = colorize.models[$("model").value];
  const anneals = Boolean(model && model.anneals);
  const useDefault = $("temperature-default").checked;
  $("temperature").disabled = !anneals || useDefault;
  $("temperature-default").disabled = !anneals;
  if (anneals && useDefault && model.default_temperature) $("temperature").value = model.default_temperature;
  $("temperature-value").textContent = anneals ? Number($("temperature").value).toFixed(2) : "n/a";
}

function setPhoto(file) {
  if (!file) return;
  colorize.file = file;
  colorize.hints = [];
  const img = $("input-img");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  closePicker();
  renderHints();
  requestColorize(0);
}

function requestColorize(delay = DEBOUNCE_MS) {
  clearTimeout(colorize.timer);
  colorize.timer = setTimeout(runColorize, delay);
}

function formFor(extra) {
  const form = new FormData();
  form.append("image", colorize.file, colorize.file.name || "photo");
  for (const h of colorize.hints) form.append("hint", `${h.x},${h.y},${h.color}`);
  for (const [key, value] of Object.entries(extra)) form.append(key, value);
  return form;
}

async function runColorize() {
  if (!colorize.file) return;
  if (colorize.controller) colorize.controller.abort(); // the previous request is superseded
  const controller = new AbortController();
  colorize.controller = controller;
  // No output_format: the server answers in the photo's own format (JPEG in, JPEG out: fast to
  // encode, which a hint's round trip feels; PNG in, PNG out, alpha kept).
  const fields = { model: $("model").value };
  if (!$("temperature").disabled) fields.temperature = $("temperature").value;
  const status = $("colorize-status");
  setStatus(status, "colorizing…");
  const started = performance.now();
  try {
    const response = await api("/v1/colorize", { method: "POST", body: formFor(fields), signal: controller.signal });
    if (!response.ok) throw new Error(await errorOf(response));
    const blob = await response.blob();
    if (colorize.resultUrl) URL.revokeObjectURL(colorize.resultUrl);
    colorize.resultUrl = URL.createObjectURL(blob);
    const img = $("result-img");
    await new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = colorize.resultUrl; });
    img.dataset.version = String(Number(img.dataset.version || 0) + 1);
    const link = $("download");
    link.href = colorize.resultUrl;
    link.download = `colorized.${blob.type === "image/jpeg" ? "jpg" : blob.type.replace("image/", "")}`;
    link.classList.remove("disabled");
    const t = response.headers.get("X-Priorlab-Temperature");
    $("result-caption").textContent = `result: ${response.headers.get("X-Priorlab-Model")}` +
      `, checkpoint ${response.headers.get("X-Priorlab-Checkpoint")}` + (t ? `, T ${t}` : "");
    setStatus(status, `${colorize.hints.length} hint(s); ${Math.round(performance.now() - started)} ms round trip`);
  } catch (error) {
    if (error.name === "AbortError") return; // a newer request replaced this one
    setStatus(status, error.message, true);
  } finally {
    if (colorize.controller === controller) colorize.controller = null;
  }
}

function renderHints() {
  const layer = $("hint-layer");
  const img = $("input-img");
  layer.replaceChildren();
  colorize.hints.forEach((hint, i) => {
    const dot = document.createElement("div");
    dot.className = "hint" + (i === colorize.selected ? " selected" : "");
    dot.dataset.index = String(i);
    dot.title = `${hint.color} at (${hint.x}, ${hint.y})`;
    dot.style.left = `${((hint.x + 0.5) / img.naturalWidth) * 100}%`;
    dot.style.top = `${((hint.y + 0.5) / img.naturalHeight) * 100}%`;
    dot.style.backgroundColor = hint.color;
    dot.addEventListener("pointerdown", (event) => dragHint(event, i));
    layer.append(dot);
  });
  $("clear-hints").disabled = colorize.hints.length === 0;
}

function useHintModel() {
  // Only the hint model takes hints: switch to it when the first one is placed.
  const hintModel = Object.values(colorize.models).find((m) => m.hints);
  if (hintModel && $("model").value !== hintModel.name) {
    $("model").value = hintModel.name;
    syncTemperature();
  }
}

function dragHint(event, index) {
  event.preventDefault();
  event.stopPropagation();
  const dot = event.currentTarget;
  const img = $("input-img");
  dot.setPointerCapture(event.pointerId);
  let moved = false;
  const move = (e) => {
    moved = true;
    const [x, y] = pixelAt(img, e);
    colorize.hints[index].x = x;
    colorize.hints[index].y = y;
    dot.style.left = `${((x + 0.5) / img.naturalWidth) * 100}%`;
    dot.style.top = `${((y + 0.5) / img.naturalHeight) * 100}%`;
  };
  const up = (e) => {
    dot.removeEventListener("pointermove", move);
    dot.removeEventListener("pointerup", up);
    if (moved) {
      renderHints();
      requestColorize();
    } else {
      openPicker(e, [colorize.hints[index].x, colorize.hints[index].y], index);
    }
  };
  dot.addEventListener("pointermove", move);
  dot.addEventListener("pointerup", up);
}

async function openPicker(event, point, index) {
  colorize.point = point;
  colorize.selected = index;
  renderHints();
  const picker = $("picker");
  picker.hidden = false;
  picker.style.left = `${event.pageX + 12}px`;
  picker.style.top = `${event.pageY + 12}px`;
  $("picker-delete").hidden = index < 0;
  $("picker-title").textContent = `(${point[0]}, ${point[1]}): suggestions…`;
  if (index >= 0) $("free-color").value = colorize.hints[index].color;
  const swatches = $("swatches");
  swatches.replaceChildren();
  // The suggestions are conditioned on the other hints, as in ideepcolor.
  const others = colorize.hints.filter((_, i) => i !== index);
  const form = new FormData();
  form.append("image", colorize.file, colorize.file.name || "photo");
  for (const h of others) form.append("hint", `${h.x},${h.y},${h.color}`);
  form.append("x", point[0]);
  form.append("y", point[1]);
  form.append("k", $("k").value || "5");
  try {
    const response = await api("/v1/suggest", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorOf(response));
    const body = await response.json();
    if (colorize.point !== point) return; // the picker moved on meanwhile
    for (const suggestion of body.colors) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "swatch";
      button.title = `${suggestion.hex}, ${(suggestion.confidence * 100).toFixed(0)}%`;
      button.dataset.color = suggestion.hex;
      button.style.backgroundColor = suggestion.hex;
      button.addEventListener("click", () => chooseColor(suggestion.hex));
      swatches.append(button);
    }
    $("picker-title").textContent = `(${point[0]}, ${point[1]}): ${body.colors.length} suggestions`;
  } catch (error) {
    $("picker-title").textContent = error.message;
  }
}

function chooseColor(color) {
  const [x, y] = colorize.point;
  if (colorize.selected >= 0) colorize.hints[colorize.selected].color = color;
  else colorize.hints.push({ x, y, color });
  useHintModel();
  closePicker();
  renderHints();
  requestColorize();
}

function closePicker() {
  $("picker").hidden = true;
  colorize.selected = -1;
  colorize.point = null;
  renderHints();
}

function setupColorize() {
  loadModels();
  const drop = $("colorize-drop");
  $("colorize-file").addEventListener("change", (e) => setPhoto(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    setPhoto(e.dataTransfer.files[0]);
  });
  $("input-img").addEventListener("click", (e) => {
    if (colorize.file) openPicker(e, pixelAt($("input-img"), e), -1);
  });
  $("input-img").addEventListener("load", renderHints);
  $("model").addEventListener("change", () => {
    syncTemperature();
    requestColorize();
  });
  $("temperature").addEventListener("input", () => { syncTemperature(); requestColorize(); });
  $("temperature-default").addEventListener("change", () => { syncTemperature(); requestColorize(); });
  $("clear-hints").addEventListener("click", () => { colorize.hints = []; closePicker(); requestColorize(); });
  $("picker-use").addEventListener("click", () => chooseColor($("free-color").value));
  $("picker-close").addEventListener("click", closePicker);
  $("picker-delete").addEventListener("click", () => {
    colorize.hints.splice(colorize.selected, 1);
    closePicker();
    requestColorize();
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closePicker(); });
}

// --- Restore ---------------------------------------------------------------------------------------

const restore = { file: null, maskFile: null, stream: null, jobId: null, painted: false, resultUrl: null };

function syncTask() {
  const task = $("restore-task").value;
  for (const element of document.querySelectorAll("[data-task]")) element.hidden = element.dataset.task !== task;
  $("mask-canvas").classList.toggle("off", task !== "inpaint");
}

function setRestorePhoto(file) {
  if (!file) return;
  restore.file = file;
  const img = $("restore-input");
  if (img.src) URL.revokeObjectURL(img.src);
  img.onload = () => {
    const canvas = $("mask-canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    restore.painted = false;
  };
  img.src = URL.createObjectURL(file);
  $("compare-before-img").src = img.src;
  $("restore-submit").disabled = false;
}

function setupMask() {
  const canvas = $("mask-canvas");
  const context = canvas.getContext("2d");
  let drawing = false;
  let last = null;
  const paint = (event) => {
    const box = canvas.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * canvas.width;
    const y = ((event.clientY - box.top) / box.height) * canvas.height;
    context.strokeStyle = "#ff0000";
    context.lineCap = "round";
    context.lineWidth = Number($("brush").value);
    context.beginPath();
    context.moveTo(...(last || [x, y]));
    context.lineTo(x, y);
    context.stroke();
    last = [x, y];
    restore.painted = true;
  };
  canvas.addEventListener("pointerdown", (e) => { drawing = true; last = null; canvas.setPointerCapture(e.pointerId); paint(e); });
  canvas.addEventListener("pointermove", (e) => { if (drawing) paint(e); });
  canvas.addEventListener("pointerup", () => { drawing = false; });
  $("mask-clear").addEventListener("click", () => {
    context.clearRect(0, 0, canvas.width, canvas.height);
    restore.painted = false;
  });
}

/** The painted strokes as the API's mask: white = known pixel, black = missing. */
function paintedMask() {
  const strokes = $("mask-canvas");
  const mask = document.createElement("canvas");
  mask.width = strokes.width;
  mask.height = strokes.height;
  const context = mask.getContext("2d");
  const pixels = strokes.getContext("2d").getImageData(0, 0, strokes.width, strokes.height);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const missing = pixels.data[i + 3] > 0;
    pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = missing ? 0 : 255;
    pixels.data[i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  return new Promise((resolve) => mask.toBlob(resolve, "image/png"));
}

async function submitRestore() {
  const status = $("restore-status");
  const task = $("restore-task").value;
  const form = new FormData();
  form.append("image", restore.file, restore.file.name || "photo");
  form.append("task", task);
  if (task === "denoise" && $("restore-sigma").value) form.append("sigma", $("restore-sigma").value);
  if (task === "super_resolve") form.append("factor", $("restore-factor").value);
  if (task === "inpaint") {
    form.append("style", $("restore-style").value);
    const maskFile = $("restore-mask-file").files[0];
    if (restore.painted) form.append("mask", await paintedMask(), "mask.png");
    else if (maskFile) form.append("mask", maskFile, maskFile.name);
  }
  const iterations = Number($("restore-iterations").value);
  if (iterations) {
    form.append("iterations", String(iterations));
    form.append("progress_every", String(Math.max(1, Math.floor(iterations / 50)))); // ~50 updates
  }
  form.append("preview", $("restore-preview").checked ? "true" : "false");
  if (restore.stream) restore.stream.abort(); // stop watching the previous job
  $("restore-progress").value = 0;
  $("restore-progress-text").textContent = "";
  $("compare-figure").hidden = true;
  setStatus(status, "submitting…");
  const response = await api("/v1/restore", { method: "POST", body: form });
  if (!response.ok) {
    setStatus(status, await errorOf(response), true);
    return;
  }
  const job = await response.json();
  restore.jobId = job.job_id;
  $("restore-cancel").disabled = false;
  setStatus(status, `job ${job.job_id}: queued at ${job.queued.position} of ${job.queued.queue_length}`);
  watch(job.job_id, job.links.events);
}

/** One Server-Sent Events block -> {id, name, data} (data null for a comment or keep-alive). */
function parseEvent(block) {
  const event = { id: null, name: "message", data: null, retry: null };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a comment: the server's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = value;
    else if (field === "event") event.name = value;
    else if (field === "data") data.push(value);
    else if (field === "retry" && /^\d+$/.test(value)) event.retry = Number(value);
  }
  if (data.length) event.data = data.join("\n");
  return event;
}

/**
 * A job's event stream, read with fetch: EventSource cannot send the Authorization header. Calls
 * handlers[name](data) for each event until `result` or `failure`; a dropped stream is opened again
 * with Last-Event-ID (what EventSource does), so only the missed events come. Rejects with the
 * server's message if it refuses the stream, or after STREAM_RETRIES failed reconnections.
 */
async function readEvents(url, handlers, signal) {
  let lastId = null;
  let retryMs = 2000;
  let failures = 0;
  for (;;) {
    const headers = lastId === null ? {} : { "Last-Event-ID": lastId };
    try {
      const response = await api(url, { headers, signal });
      if (!response.ok) throw Object.assign(new Error(await errorOf(response)), { final: true });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (event.retry !== null) retryMs = event.retry;
          if (event.id !== null) lastId = event.id;
          if (event.data === null) continue;
          failures = 0;
          const handle = handlers[event.name];
          if (handle) handle(JSON.parse(event.data));
          if (event.name === "result" || event.name === "failure") return;
        }
      }
    } catch (error) {
      if (signal.aborted) return; // a newer job replaced this one
      if (error.final) throw error;
    }
    failures += 1;
    if (failures > STREAM_RETRIES) throw new Error("lost the event stream");
    await new Promise((resolve) => setTimeout(resolve, retryMs));
    if (signal.aborted) return;
  }
}

function watch(jobId, url) {
  const status = $("restore-status");
  const controller = new AbortController();
  restore.stream = controller;
  const handlers = {
    queued: (e) => setStatus(status, `job ${jobId}: queued at ${e.queued.position} of ${e.queued.queue_length}`),
    started: (e) => {
      const s = e.started;
      setStatus(status, `job ${jobId}: running on ${s.worker} (${s.device}), attempt ${s.attempt}`);
    },
    progress: (e) => {
      const p = e.progress;
      const percent = p.max_iterations ? (100 * p.iteration) / p.max_iterations : 0;
      $("restore-progress").value = percent;
      $("restore-progress-text").textContent =
        `iteration ${p.iteration}/${p.max_iterations} · loss ${Number(p.loss).toPrecision(4)} · ETA ${Math.round(p.eta_s)} s`;
      if (p.preview) $("restore-preview-img").src = `data:image/png;base64,${p.preview}`;
    },
    result: (e) => {
      const r = e.result;
      $("restore-progress").value = 100;
      $("restore-progress-text").textContent = `done: ${r.iterations_run} iterations (iterate ${r.chosen_iteration} chosen)`;
      const bytes = Uint8Array.from(atob(r.image), (c) => c.charCodeAt(0));
      if (restore.resultUrl) URL.revokeObjectURL(restore.resultUrl);
      restore.resultUrl = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
      $("restore-result").src = restore.resultUrl;
      $("restore-download").href = restore.resultUrl;
      $("compare-figure").hidden = false;
      setStatus(status, `job ${jobId}: done in ${(r.timings.total_ms / 1000).toFixed(1)} s on ${r.device}`);
    },
    failure: (f) => setStatus(status, `${f.message} (${f.code}, HTTP ${f.status})`, true),
  };
  readEvents(url, handlers, controller.signal)
    .catch((error) => setStatus(status, `job ${jobId}: ${error.message}`, true))
    .finally(() => {
      if (restore.stream !== controller) return; // a newer job's stream owns the page now
      restore.stream = null;
      $("restore-cancel").disabled = true;
    });
}

async function cancelRestore() {
  if (!restore.jobId) return;
  const response = await api(`/v1/restore/${restore.jobId}/cancel`, { method: "POST" });
  if (!response.ok) setStatus($("restore-status"), await errorOf(response), true);
  // The stream then ends with a `failure` event (CANCELLED), which the watcher shows.
}

function setupRestore() {
  syncTask();
  setupMask();
  $("restore-task").addEventListener("change", syncTask);
  $("restore-file").addEventListener("change", (e) => setRestorePhoto(e.target.files[0]));
  $("restore-submit").addEventListener("click", () => submitRestore().catch((error) => setStatus($("restore-status"), error.message, true)));
  $("restore-cancel").addEventListener("click", cancelRestore);
  $("compare-slider").addEventListener("input", (e) => { $("compare-before").style.width = `${e.target.value}%`; });
}

function setupToken() {
  const field = $("token");
  field.value = sessionStorage.getItem(TOKEN_KEY) || "";
  field.addEventListener("change", () => {
    const token = field.value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    field.classList.remove("needed");
    if (!Object.keys(colorize.models).length) { // the list failed without a token: try again
      setStatus($("colorize-status"), "");
      loadModels();
    }
  });
}

setupToken();
setupColorize();
setupRestore();
