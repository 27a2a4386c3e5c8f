// The inspection page: uploads images, shows the server's results, and asks for decisions and
// figures at the thresholds of the sliders. The server keeps every map, so nothing here runs the
// model; decisions come from the server's own rule.
"use strict";

const $ = (selector) => document.querySelector(selector);

const page = {
  info: null,
  cards: new Map(),      // entry id -> {el, img, url, status}
  noticeSeq: null,       // the server's notices up to here are shown (null: not loaded yet)
  thresholdSeq: 0,       // the thresholds the server set up to here are applied
  upload: {total: 0, sent: 0},
  uploading: Promise.resolve(),
  uploadRound: 0,        // one per Clear: parts of an earlier round are not sent
  busy: false,
  pixelMoved: false,
  requested: 0,
  applied: 0,
  timer: null,
};

// ---- thresholds ---------------------------------------------------------------------------------

const roundTo = (value, decimals) => Number(value.toFixed(decimals));
const floorTo = (value, decimals) => Math.floor(value * 10 ** decimals) / 10 ** decimals;
const ceilTo = (value, decimals) => Math.ceil(value * 10 ** decimals) / 10 ** decimals;

class Threshold {
  // A slider with a number box and a button that removes the threshold. What is moved or typed is
  // rounded to the precision shown; a value the server sets (a threshold file, a calibration) is kept
  // as it is and shown in full. Either way the box shows the threshold that decides and is saved.
  constructor(id, fixedDecimals) {
    this.root = $(`#${id}-threshold`);
    this.slider = $(`#${id}-slider`);
    this.number = $(`#${id}-number`);
    this.fixedDecimals = fixedDecimals;
    this.decimals = fixedDecimals ?? 4;
    this.value = null;
    this.onChange = () => {};
    this.slider.addEventListener("input", () => {
      this.set(roundTo(Number(this.slider.value), this.decimals));
      this.onChange();
    });
    this.number.addEventListener("change", () => {
      const text = this.number.value.trim();
      this.set(text === "" ? null : roundTo(Number(text), this.decimals));
      this.onChange();
    });
    this.root.querySelector(".unset").addEventListener("click", () => {
      this.set(null);
      this.onChange();
    });
    this.set(null);
  }

  set(value) {
    this.value = value === null || !Number.isFinite(value) ? null : value;
    this.root.classList.toggle("off", this.value === null);
    if (this.value === null) {
      this.number.value = "";
      return;
    }
    this.number.value = this.shown();
    if (this.value < Number(this.slider.min) || this.value > Number(this.slider.max)) {
      this.range(Number(this.slider.min), Number(this.slider.max));
    }
    this.slider.value = this.value;
  }

  shown() {
    // The value at the precision shown, or in full when that would round it.
    const fixed = this.value.toFixed(this.decimals);
    return Number(fixed) === this.value ? fixed : String(this.value);
  }

  range(low, high) {
    // The slider spans [low, high] and the current value, in 1000 steps.
    if (this.value !== null) {
      low = Math.min(low, this.value);
      high = Math.max(high, this.value);
    }
    if (!(high > low)) high = low + 1;
    if (this.fixedDecimals === null) {
      this.decimals = Math.min(8, Math.max(0, Math.ceil(-Math.log10((high - low) / 1000))));
    }
    low = floorTo(low, this.decimals);
    high = ceilTo(high, this.decimals);
    if (Number(this.slider.min) !== low || Number(this.slider.max) !== high) {
      this.slider.min = low;
      this.slider.max = high;
      this.slider.step = (high - low) / 1000;
    }
    if (this.value !== null) {
      this.slider.value = this.value;
      this.number.value = this.shown();
    }
  }
}

let imageThreshold = null;  // made once the server has said how many decimals scores have
let pixelThreshold = null;

function thresholdQuery() {
  const params = new URLSearchParams();
  if (imageThreshold.value !== null) params.set("image_threshold", imageThreshold.value);
  if (pixelThreshold.value !== null) params.set("pixel_threshold", pixelThreshold.value);
  return params;
}

let debounce = null;
function thresholdsChanged(pixel) {
  if (pixel) page.pixelMoved = true;
  clearTimeout(debounce);
  debounce = setTimeout(refresh, 60);
}

// ---- talking to the server ----------------------------------------------------------------------

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new Error("the server cannot be reached; is it still running?");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function sendFiles(url, files) {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  return api(url, {method: "POST", body: form});
}

function notice(text, kind = "") {
  const item = document.createElement("div");
  item.className = `notice ${kind}`;
  const span = document.createElement("span");
  span.textContent = text;
  const close = document.createElement("button");
  close.type = "button";
  close.textContent = "×";
  close.title = "Dismiss";
  close.addEventListener("click", () => item.remove());
  item.append(span, close);
  $("#notices").append(item);
}

const megabytes = (bytes) => `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 1 : 0)} MB`;

// ---- uploads ------------------------------------------------------------------------------------

function uploadImages(fileList) {
  // Queue a selection: files over the byte limit are refused here, the rest go in parts of a few
  // files each, one part at a time, while the server works through what has arrived. Clear drops
  // the parts not sent yet.
  const limits = page.info.limits;
  const files = [];
  for (const file of fileList) {
    if (file.size > limits.max_file_bytes) {
      notice(`${file.name}: ${megabytes(file.size)} is over the limit of ${megabytes(limits.max_file_bytes)} per image`,
             "error");
    } else {
      files.push(file);
    }
  }
  const parts = [];
  let part = [], bytes = 0;
  for (const file of files) {
    const full = part.length >= limits.files_per_request || bytes + file.size > limits.request_file_bytes;
    if (part.length && full) {
      parts.push(part);
      part = [];
      bytes = 0;
    }
    part.push(file);
    bytes += file.size;
  }
  if (part.length) parts.push(part);
  page.upload.total += files.length;
  const round = page.uploadRound;
  page.uploading = page.uploading.then(async () => {
    for (const part of parts) {
      if (round !== page.uploadRound) return;
      try {
        await sendFiles("/api/upload", part);
      } catch (error) {
        if (round === page.uploadRound) {
          notice(`Upload of ${part.map((f) => f.name).join(", ")} failed: ${error.message}`, "error");
        }
      }
      if (round !== page.uploadRound) return;
      page.upload.sent += part.length;
      refresh();
    }
    if (page.upload.sent >= page.upload.total) page.upload = {total: 0, sent: 0};
  });
  refresh();
}

async function cancelUploads() {
  // No part of the selections so far is sent from now on; the one on its way is waited for, so
  // that what clears the page after this also clears it.
  const sending = page.uploading;
  page.uploadRound += 1;
  page.upload = {total: 0, sent: 0};
  await sending;
}

async function uploadReference(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  if (files.length > page.info.limits.files_per_request) {
    notice(`At most ${page.info.limits.files_per_request} reference images at once.`, "error");
    return;
  }
  try {
    await sendFiles("/api/reference", files);
    notice(`Building the reference bank from ${files.length} good image(s); the results are run again with it.`);
  } catch (error) {
    notice(error.message, "error");
  }
  refresh();
}

function dropTarget(zone, input, handle) {
  input.addEventListener("change", () => {
    handle(input.files);
    input.value = "";
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") input.click();
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    event.stopPropagation();
    zone.classList.remove("over");
    handle(event.dataTransfer.files);
  });
}

// ---- drawing the state --------------------------------------------------------------------------

function card(entry) {
  let c = page.cards.get(entry.id);
  if (!c) {
    const el = document.createElement("article");
    el.className = "result";
    el.dataset.id = entry.id;
    el.innerHTML = `<div class="result-head"><span class="name"></span><span class="score"></span>
      <span class="decision"></span></div><div class="body"></div>`;
    el.querySelector(".name").textContent = entry.name;
    el.querySelector(".name").title = entry.name;
    $("#results").append(el);
    c = {el, img: null, url: "", status: "", version: ""};
    page.cards.set(entry.id, c);
  }
  const {el} = c;
  el.dataset.status = entry.status;
  el.dataset.decision = entry.decision;
  const decision = el.querySelector(".decision");
  decision.className = `decision ${entry.decision}`;
  decision.textContent = entry.status === "done" ? entry.decision || "no threshold" : "";
  decision.hidden = entry.status !== "done";
  el.querySelector(".score").innerHTML = entry.status === "done" ? "score <b class=\"score-value\"></b>" : "";
  if (entry.status === "done") el.querySelector(".score-value").textContent = entry.score_text;
  const body = el.querySelector(".body");
  if (entry.status !== c.status) {
    c.status = entry.status;
    body.replaceChildren();
    c.img = null;
    c.url = "";
    if (entry.status === "queued") {
      const wait = document.createElement("div");
      wait.className = "waiting";
      wait.textContent = "waiting for the model…";
      body.append(wait);
    } else if (entry.status === "error") {
      const message = document.createElement("p");
      message.className = "error";
      message.textContent = entry.error;
      body.append(message);
    } else {
      c.img = document.createElement("img");
      c.img.className = "figure";
      c.img.loading = "lazy";
      c.img.alt = `${entry.name}: input, anomaly map and outline`;
      const meta = document.createElement("p");
      meta.className = "meta";
      body.append(c.img, meta);
    }
  }
  if (entry.status === "done") {
    const tiles = entry.rows * entry.cols;
    const seen = `seen through ${entry.rows}×${entry.cols} tile${tiles === 1 ? "" : "s"}`;
    const digits = page.info.score_digits;
    body.querySelector(".meta").textContent = `map maximum ${entry.map_max.toFixed(digits)} · ${seen}`;
    let note = body.querySelector(".note");
    const text = entry.rerun ? "Running again with the changed reference; this is the previous result." : entry.note;
    if (text && !note) {
      note = document.createElement("p");
      note.className = "note";
      body.append(note);
    }
    if (note) {
      note.textContent = text;
      note.hidden = !text;
    }
  }
  c.version = entry.version;
  return c;
}

function figureUrl(id, version, scale) {
  // v= names the result, so the browser's cache never shows a figure of an earlier one
  const params = new URLSearchParams({v: version, low: scale.low, high: scale.high});
  if (pixelThreshold.value !== null) params.set("pixel_threshold", pixelThreshold.value);
  return `/api/figure/${id}.png?${params}`;
}

function render(state) {
  const {progress} = state;
  page.busy = state.working || progress.queued > 0 || page.upload.total > 0;

  // notices, and thresholds the server set (a calibration, or back to the start), since the last look
  const fresh = state.notices.filter((n) => page.noticeSeq !== null && n.seq > page.noticeSeq);
  for (const n of fresh) notice(n.text);
  page.noticeSeq = Math.max(page.noticeSeq ?? 0, ...state.notices.map((n) => n.seq));
  const set = state.thresholds;
  if (set && set.seq > page.thresholdSeq) {
    page.thresholdSeq = set.seq;
    imageThreshold.set(set.image_threshold);
    pixelThreshold.set(set.pixel_threshold);
    page.pixelMoved = true;
    notice(set.text);
    refresh();
  }

  // slider ranges: scores from 0, maps over what has been seen
  imageThreshold.range(0, Math.max(1, state.score_max ?? 0));
  if (state.scale) pixelThreshold.range(state.scale.low, state.scale.high);
  pixelThreshold.slider.disabled = !state.scale && pixelThreshold.value === null;

  // progress
  const pending = page.upload.total - page.upload.sent;
  const finished = progress.total - progress.queued;
  const bar = $("#progress");
  bar.hidden = !page.busy;
  if (page.busy) {
    const parts = [];
    if (pending > 0) parts.push(`sending ${page.upload.sent} of ${page.upload.total} files`);
    if (progress.total) parts.push(`inspected ${finished} of ${progress.total + pending}`);
    if (state.stage) parts.push(state.stage);
    $("#progress-text").textContent = parts.join(" · ") + "…";
    $("#progress-bar").style.width = `${(100 * finished) / Math.max(1, progress.total + pending)}%`;
  }

  // summary
  const done = progress.total - progress.queued - progress.errors;
  const summary = $("#summary");
  if (!progress.total) {
    summary.textContent = "No images yet: drop some on the page.";
  } else {
    const decided = imageThreshold.value !== null || pixelThreshold.value !== null;
    summary.innerHTML = "";
    const pieces = [`<b>${done}</b> inspected`];
    if (decided) pieces.push(`<b>${progress.anomalous}</b> anomalous`, `<b>${progress.normal}</b> normal`);
    if (progress.errors) pieces.push(`<b>${progress.errors}</b> not readable`);
    summary.innerHTML = pieces.join(" · ") + (decided ? "" : " · set a threshold to decide");
  }

  // cards, in upload order
  const seen = new Set();
  for (const entry of state.entries) {
    seen.add(entry.id);
    card(entry);
  }
  for (const [id, c] of page.cards) {
    if (!seen.has(id)) {
      c.el.remove();
      page.cards.delete(id);
    }
  }
  // figures: while images still arrive the colour range keeps widening, so figures already shown
  // are redrawn with it once the queue is done (or at once when the pixel threshold moves)
  if (state.scale) {
    const redraw = !page.busy || page.pixelMoved;
    page.pixelMoved = false;
    for (const [id, c] of page.cards) {
      const url = figureUrl(id, c.version, state.scale);
      if (c.img && url !== c.url && (!c.url || redraw)) {
        c.img.src = url;
        c.url = url;
      }
    }
  }

  // downloads and the reference
  const query = thresholdQuery();
  const csv = $("#download-csv"), maps = $("#download-maps"), save = $("#save-thresholds");
  csv.href = `/api/predictions.csv?${query}`;
  csv.classList.toggle("disabled", !progress.total);
  maps.classList.toggle("disabled", !state.scale);
  maps.href = "/api/maps.zip";
  save.classList.toggle("disabled", imageThreshold.value === null);
  save.href = `/api/threshold.json?${query}`;
  $("#save-hint").hidden = imageThreshold.value !== null;
  const ref = state.reference;
  const origin = ref && (ref.origin === "uploaded" ? "uploaded here" : "from the command line");
  $("#reference-status").textContent = ref
    ? `Reference: ${ref.images} good image${ref.images === 1 ? "" : "s"}, ${origin}.`
    : "No reference: zero-shot.";
  $("#download-bank").hidden = !state.bank;
  $("#drop-reference").hidden = !state.bank;
}

async function refresh() {
  clearTimeout(page.timer);
  const mine = ++page.requested;
  try {
    const state = await api(`/api/state?${thresholdQuery()}`);
    if (mine > page.applied) {
      page.applied = mine;
      render(state);
    }
  } catch (error) {
    notice(error.message, "error");
  }
  if (mine === page.requested) page.timer = setTimeout(refresh, page.busy ? 400 : 3000);
}

// ---- start --------------------------------------------------------------------------------------

async function start() {
  try {
    page.info = await api("/api/info");
  } catch (error) {
    $("#model").textContent = error.message;
    return;
  }
  const info = page.info;
  const grid = info.grid === "auto" ? `grid auto (at most ${info.max_tiles} tiles)` : "grid fixed";
  $("#model").textContent = [info.checkpoint && `checkpoint ${info.checkpoint}`, info.backbone, grid]
    .filter(Boolean).join(" · ");
  imageThreshold = new Threshold("image", info.score_digits);
  pixelThreshold = new Threshold("pixel", null);
  imageThreshold.onChange = () => thresholdsChanged(false);
  pixelThreshold.onChange = () => thresholdsChanged(true);
  const limits = info.limits;
  $("#caps").textContent = `Up to ${megabytes(limits.max_file_bytes)} and ${(limits.max_pixels / 1e6).toFixed(0)} ` +
    `megapixels per image, ${limits.max_images} images at a time; ${info.suffixes.join(" ")}.`;
  imageThreshold.set(info.thresholds.image);
  pixelThreshold.set(info.thresholds.pixel);

  dropTarget($("#dropzone"), $("#files"), uploadImages);
  dropTarget($("#reference-drop"), $("#reference-files"), uploadReference);
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) uploadImages(event.dataTransfer.files);
  });
  $("#clear").addEventListener("click", async () => {
    // the results and uploads are gone from the server once cleared: ask first
    if (!window.confirm("Clear every result and upload from the page? The server removes their files.")) return;
    await cancelUploads();
    await api("/api/clear", {method: "POST"}).catch((error) => notice(error.message, "error"));
    $("#notices").replaceChildren();
    refresh();
  });
  $("#drop-reference").addEventListener("click", async () => {
    await api("/api/reference", {method: "DELETE"}).catch((error) => notice(error.message, "error"));
    refresh();
  });
  refresh();
}

start();
