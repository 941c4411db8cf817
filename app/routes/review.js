// The review page: a queue of photos, each identified in turn and decided by a person.
// It speaks only the public HTTP API, with the key typed into the page (kept in this tab's
// sessionStorage, never in a cookie). The queue's photos live in IndexedDB and its state in
// localStorage, so a reload keeps the place.
"use strict";

const TOP_K = 5;
const UNDO_MS = 60_000;
const NEW = "new_individual";
const QUEUE_KEY = "whaleid-review-queue";
const $ = (id) => document.getElementById(id);

const state = {
  queue: [], // {id, name, status: pending|matched|new|skipped, individual, imageId, created, at}
  current: -1,
  answer: null, // the /identify answer for the current photo
  picked: -1, // index into answer.predictions
  shown: null, // {individual, images, index}: the gallery photos of the picked individual
  photoRecords: new Map(), // image id → GET /gallery/images/{id}
  individuals: new Map(), // individual id → GET /gallery/individuals/{id}
  urls: [],
  undoTimer: null,
  shows: 0, // counts show() calls: an answer for an earlier one is dropped
};

// -- the API ------------------------------------------------------------------------------------

function headers() {
  const key = $("key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let code = "error", message = response.statusText;
    try {
      const body = await response.json();
      ({ code, message } = body.error);
    } catch (_) { /* not our JSON: keep the status text */ }
    throw new ApiError(response.status, code, message);
  }
  return response;
}

const getJson = async (path) => (await api(path)).json();

async function imageUrl(path) {
  const url = URL.createObjectURL(await (await api(path)).blob());
  state.urls.push(url);
  return url;
}

function releaseUrls() {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
}

// -- the queue: photos in IndexedDB, the rest in localStorage ------------------------------------

let dbPromise = null;
function db() {
  dbPromise ??= new Promise((resolve, reject) => {
    const request = indexedDB.open("whaleid-review", 1);
    request.onupgradeneeded = () => request.result.createObjectStore("photos");
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return dbPromise;
}

async function photoStore(mode, fn) {
  const tx = (await db()).transaction("photos", mode);
  const request = fn(tx.objectStore("photos"));
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve(request && request.result);
    tx.onerror = () => reject(tx.error);
  });
}

const putPhoto = (id, blob) => photoStore("readwrite", (s) => s.put(blob, id));
const getPhoto = (id) => photoStore("readonly", (s) => s.get(id));
const clearPhotos = () => photoStore("readwrite", (s) => s.clear());

function save() {
  localStorage.setItem(QUEUE_KEY, JSON.stringify({ queue: state.queue, current: state.current }));
  const item = state.queue[state.current];
  history.replaceState(null, "", item ? `#photo=${item.id}` : location.pathname);
}

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(QUEUE_KEY) || "{}");
    state.queue = Array.isArray(saved.queue) ? saved.queue : [];
    state.current = Number.isInteger(saved.current) ? saved.current : -1;
  } catch (_) {
    state.queue = [];
  }
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("photo");
  const at = state.queue.findIndex((item) => item.id === fromUrl);
  if (at >= 0) state.current = at;
  if (state.current >= state.queue.length) state.current = state.queue.length - 1;
}

async function addFiles(files) {
  const first = state.queue.length;
  for (const file of files) {
    const id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    await putPhoto(id, file);
    state.queue.push({ id, name: file.name, status: "pending" });
  }
  const current = state.queue[state.current];
  if (!current || current.status !== "pending") state.current = first;
  save();
  await show(state.current);
}

const STATUS_TEXT = {
  pending: () => "to review",
  matched: (item) => `this is ${item.individual}`,
  new: (item) => `new: ${item.individual}`,
  skipped: () => "skipped",
};

async function renderQueue() {
  const list = $("queue");
  const done = state.queue.filter((item) => item.status !== "pending").length;
  $("progress").textContent = state.queue.length
    ? `${done} of ${state.queue.length} reviewed`
    : "queue empty";
  const items = await Promise.all(
    state.queue.map(async (item, i) => {
      const li = document.createElement("li");
      li.dataset.status = item.status;
      li.dataset.index = String(i);
      li.className = i === state.current ? "current" : "";
      const img = document.createElement("img");
      img.alt = "";
      const blob = await getPhoto(item.id);
      if (blob) {
        img.src = URL.createObjectURL(blob);
        img.onload = () => URL.revokeObjectURL(img.src);
      }
      const text = document.createElement("div");
      text.innerHTML = '<span class="name"></span><span class="state"></span>';
      text.children[0].textContent = item.name;
      text.children[1].textContent = STATUS_TEXT[item.status](item);
      li.append(img, text);
      li.addEventListener("click", () => show(i));
      return li;
    }),
  );
  list.replaceChildren(...items);
  list.querySelector(".current")?.scrollIntoView({ block: "nearest", inline: "nearest" });
}

// -- one photo: identify, candidates, comparison -------------------------------------------------

async function show(index, message = "") {
  const ticket = ++state.shows;
  state.current = index;
  state.answer = null;
  state.picked = -1;
  state.shown = null;
  save();
  releaseUrls();
  renderQueue();
  const item = state.queue[index];
  $("empty").hidden = !!item;
  $("compare").hidden = $("actions").hidden = !item;
  $("candidates").replaceChildren();
  $("lines").replaceChildren();
  clearEvidence("pick a candidate (1–5)");
  if (!item) return;
  const blob = await getPhoto(item.id);
  if (ticket !== state.shows) return;
  if (!blob) {
    notify(`the photo ${item.name} is no longer stored in this browser: add it again`, true);
    return;
  }
  const queryUrl = URL.createObjectURL(blob);
  state.urls.push(queryUrl);
  $("query-img").src = queryUrl;
  $("query-caption").textContent = `${item.name} · identifying…`;
  $("query-overlay").replaceChildren();
  const decided = item.status === "pending" ? "" : ` · ${STATUS_TEXT[item.status](item)}`;
  const body = new FormData();
  body.append("image", blob, item.name);
  body.append("top_k", String(TOP_K));
  let answer;
  try {
    // explain=1 asks for matched keypoints where the service re-ranks with local features.
    answer = await (await api("identify?explain=1", { method: "POST", body })).json();
  } catch (error) {
    if (ticket !== state.shows) return;
    $("query-caption").textContent = item.name + decided;
    notify(`identify refused: ${error.message}`, true);
    return;
  }
  if (ticket !== state.shows) return; // moved on meanwhile
  state.answer = answer;
  const crop = answer.crop
    ? `crop box (detector ${(answer.crop.confidence * 100).toFixed(0)}%)`
    : "whole photo";
  $("query-caption").textContent = `${item.name} · ${crop}${decided}`;
  $("model").textContent =
    `model ${answer.model.slice(0, 12)}… · threshold ${answer.threshold.toFixed(3)} · ` +
    `${answer.timing_ms.total.toFixed(0)} ms`;
  whenLoaded($("query-img"), drawQuery);
  renderCandidates();
  const first = answer.predictions.findIndex((p) => p.individual_id !== NEW);
  if (first >= 0) pick(first);
  if (!restoreUndo(item) && message) notify(message);
}

function whenLoaded(img, fn) {
  if (img.complete && img.naturalWidth) fn();
  else img.addEventListener("load", fn, { once: true });
}

// An SVG laid exactly over an <img>, in the coordinates of a photo of `width` x `height`.
function overlay(svg, img, width, height) {
  Object.assign(svg.style, {
    left: `${img.offsetLeft}px`, top: `${img.offsetTop}px`,
    width: `${img.offsetWidth}px`, height: `${img.offsetHeight}px`,
  });
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
}

function rect(svg, box, className) {
  const [x1, y1, x2, y2] = box;
  const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
  Object.entries({ x: x1, y: y1, width: x2 - x1, height: y2 - y1 }).forEach(([k, v]) => r.setAttribute(k, v));
  if (className) r.setAttribute("class", className);
  svg.appendChild(r);
}

function drawQuery() {
  const img = $("query-img");
  // The crop box is in pixels of the upright photo, as the browser shows it.
  overlay($("query-overlay"), img, img.naturalWidth, img.naturalHeight);
  if (state.answer?.crop) rect($("query-overlay"), state.answer.crop.box);
  drawLines();
}

function renderCandidates() {
  const threshold = state.answer.threshold;
  const cards = state.answer.predictions.map((p, i) => {
    const li = document.createElement("li");
    const isNew = p.individual_id === NEW;
    li.className = isNew ? "card new-card" : "card";
    li.dataset.individual = p.individual_id;
    // The calibrated probability where the service gives one, else the similarity.
    const value = p.probability ?? p.score;
    const label = p.probability != null ? "p" : isNew ? "threshold" : "similarity";
    li.innerHTML =
      '<span class="rank"></span><div class="thumb"></div><div class="id"></div>' +
      '<div class="meta"></div><div class="value"></div><div class="score"><span></span><i></i></div>';
    li.querySelector(".rank").textContent = String(i + 1);
    li.querySelector(".id").textContent = isNew ? "New individual" : p.individual_id;
    const meta = isNew ? ["none of these"] : [p.species || "species unknown", p.viewpoint];
    li.querySelector(".meta").textContent = meta.filter(Boolean).join(" · ");
    li.querySelector(".value").textContent = `${label} ${value.toFixed(3)}`;
    li.title = `bar: ${label}; mark: the threshold ${threshold.toFixed(3)}`;
    li.querySelector(".score span").style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
    li.querySelector(".score i").style.left = `${Math.max(0, Math.min(1, threshold)) * 100}%`;
    const thumb = li.querySelector(".thumb");
    if (isNew) {
      thumb.textContent = "?";
    } else if (p.evidence) {
      imageUrl(`gallery/images/${p.evidence.image_id}/thumbnail?size=240`)
        .then((src) => thumb.replaceChildren(Object.assign(new Image(), { src, alt: p.individual_id })))
        .catch((error) => { thumb.textContent = `photo: ${error.message}`; });
    }
    li.addEventListener("click", () => pick(i));
    return li;
  });
  $("candidates").replaceChildren(...cards);
}

function pick(i) {
  const p = state.answer?.predictions[i];
  if (!p) return;
  state.picked = i;
  [...$("candidates").children].forEach((card, k) => card.classList.toggle("picked", k === i));
  if (p.individual_id === NEW) {
    $("confirm").disabled = true;
    $("confirm-id").textContent = "…";
    $("new-id").focus();
    clearEvidence("no known individual: name a new one");
    return;
  }
  $("confirm").disabled = false;
  $("confirm-id").textContent = p.individual_id;
  state.shown = { individual: p.individual_id, images: [p.evidence.image_id], index: 0 };
  showGalleryPhoto();
  // The individual's other photos, to cycle through (a click on the photo, or ←/→).
  individual(p.individual_id)
    .then((detail) => {
      if (state.shown?.individual !== p.individual_id) return;
      const others = detail.images.map((im) => im.id).filter((id) => id !== p.evidence.image_id);
      state.shown.images = [p.evidence.image_id, ...others];
      captionEvidence();
    })
    .catch(() => { /* the photo shown is enough; its caption says why there are no others */ });
}

async function individual(id) {
  if (!state.individuals.has(id)) state.individuals.set(id, await getJson(`gallery/individuals/${encodeURIComponent(id)}`));
  return state.individuals.get(id);
}

async function photoRecord(imageId) {
  if (!state.photoRecords.has(imageId)) state.photoRecords.set(imageId, await getJson(`gallery/images/${imageId}`));
  return state.photoRecords.get(imageId);
}

function clearEvidence(note) {
  $("evidence-id").textContent = "—";
  $("evidence-caption").textContent = "";
  $("evidence-img").removeAttribute("src");
  $("evidence-img").hidden = true;
  $("evidence-overlay").replaceChildren();
  $("evidence-note").textContent = note;
  $("evidence-note").hidden = false;
  $("lines").replaceChildren();
}

function captionEvidence() {
  const shown = state.shown;
  if (!shown) return;
  const p = state.answer.predictions[state.picked];
  const imageId = shown.images[shown.index];
  const parts = [`photo ${shown.index + 1} of ${shown.images.length}`, `image ${imageId}`];
  if (imageId === p.evidence.image_id) parts.push(`similarity ${p.evidence.similarity.toFixed(3)}`);
  $("evidence-id").textContent = shown.individual;
  $("evidence-caption").textContent = parts.join(" · ");
}

async function showGalleryPhoto() {
  const shown = state.shown;
  const imageId = shown.images[shown.index];
  captionEvidence();
  $("lines").replaceChildren();
  try {
    const [src, record] = await Promise.all([
      imageUrl(`gallery/images/${imageId}/thumbnail?size=1024`),
      photoRecord(imageId),
    ]);
    if (state.shown !== shown || shown.images[shown.index] !== imageId) return;
    const img = $("evidence-img");
    img.hidden = false;
    $("evidence-note").hidden = true;
    img.src = src;
    whenLoaded(img, () => {
      // Thumbnails are the upright photo scaled: draw in the full photo's pixels.
      overlay($("evidence-overlay"), img, record.width || img.naturalWidth, record.height || img.naturalHeight);
      if (record.box) rect($("evidence-overlay"), record.box, "gallery-box");
      drawLines();
    });
  } catch (error) {
    if (state.shown !== shown) return;
    clearEvidence(`gallery photo: ${error.message}`);
    captionEvidence();
  }
}

function cycle(step) {
  const shown = state.shown;
  if (!shown || shown.images.length < 2) return;
  shown.index = (shown.index + step + shown.images.length) % shown.images.length;
  showGalleryPhoto();
}

// Matched keypoints (evidence.matches: [xq, yq, xg, yg] in upright pixels), when the answer
// carries them, as lines from the query photo to the evidence photo.
function drawLines() {
  const svg = $("lines");
  svg.replaceChildren();
  const p = state.answer?.predictions[state.picked];
  const shown = state.shown;
  const matches = p?.evidence?.matches;
  if (!matches?.length || !shown || shown.images[shown.index] !== p.evidence.image_id) return;
  const query = $("query-img"), gallery = $("evidence-img");
  const record = state.photoRecords.get(p.evidence.image_id);
  if (!query.naturalWidth || !gallery.naturalWidth || gallery.hidden) return;
  const box = $("compare").getBoundingClientRect();
  const q = query.getBoundingClientRect(), g = gallery.getBoundingClientRect();
  const qs = q.width / query.naturalWidth, gs = g.width / (record?.width || gallery.naturalWidth);
  const ns = "http://www.w3.org/2000/svg";
  for (const [xq, yq, xg, yg] of matches.slice(0, 300)) {
    const a = [q.left - box.left + xq * qs, q.top - box.top + yq * qs];
    const b = [g.left - box.left + xg * gs, g.top - box.top + yg * gs];
    const line = document.createElementNS(ns, "line");
    Object.entries({ x1: a[0], y1: a[1], x2: b[0], y2: b[1] }).forEach(([k, v]) => line.setAttribute(k, v));
    svg.appendChild(line);
    for (const [cx, cy] of [a, b]) {
      const dot = document.createElementNS(ns, "circle");
      Object.entries({ cx, cy, r: 2.2 }).forEach(([k, v]) => dot.setAttribute(k, v));
      svg.appendChild(dot);
    }
  }
}

// -- decisions ------------------------------------------------------------------------------------

async function register(individualId, species) {
  const item = state.queue[state.current];
  if (!item) return;
  const blob = await getPhoto(item.id);
  const body = new FormData();
  body.append("image", blob, item.name);
  body.append("individual_id", individualId);
  if (species) body.append("species", species);
  let answer;
  try {
    answer = await (await api("gallery", { method: "POST", body })).json();
  } catch (error) {
    notify(`not stored: ${error.message}`, true);
    return false;
  }
  const [image] = answer.images;
  const known = state.answer?.predictions.some((p) => p.individual_id === individualId);
  Object.assign(item, {
    status: known ? "matched" : "new",
    individual: answer.individual_id,
    imageId: image.image_id,
    created: image.created,
    at: Date.now(),
  });
  state.individuals.delete(answer.individual_id);
  save();
  restoreUndo(item);
  await next();
  return true;
}

function confirmPicked() {
  const p = state.answer?.predictions[state.picked];
  if (p && p.individual_id !== NEW) register(p.individual_id);
}

async function skip() {
  const item = state.queue[state.current];
  if (!item) return;
  Object.assign(item, { status: "skipped", individual: undefined, imageId: undefined, at: Date.now() });
  save();
  await next(`skipped ${item.name}`);
}

async function next(message = "") {
  const n = state.queue.length;
  for (let step = 1; step <= n; step++) {
    const i = (state.current + step) % n;
    if (state.queue[i].status === "pending") return show(i, message);
  }
  // All decided: the last photo again, its decision in the caption (and its undo, if any).
  await show(state.current, message);
  $("progress").textContent = `all ${n} reviewed`;
}

// What was stored, and an undo (delete that image) for a minute after it was stored; false when
// there is nothing to say.
function restoreUndo(item) {
  clearInterval(state.undoTimer);
  const last = [...state.queue].filter((it) => it.imageId != null && it.created && Date.now() - it.at < UNDO_MS)
    .sort((a, b) => b.at - a.at)[0];
  const notice = $("notice");
  if (!last) {
    if (item && item.status !== "pending" && item.imageId != null) {
      notify(`${item.name}: image ${item.imageId} of ${item.individual}${item.created ? "" : " (was already stored)"}`);
      return true;
    }
    notice.hidden = true;
    notice.replaceChildren();
    return false;
  }
  const verb = last.status === "new" ? "registered as new individual" : "added to";
  const text = document.createElement("span");
  const button = Object.assign(document.createElement("button"), { type: "button", id: "undo" });
  const tick = () => {
    const left = Math.ceil((UNDO_MS - (Date.now() - last.at)) / 1000);
    if (left <= 0) { clearInterval(state.undoTimer); button.remove(); return; }
    button.innerHTML = `Undo <kbd>U</kbd> <span class="muted">${left} s</span>`;
  };
  text.textContent = `Stored ${last.name} as image ${last.imageId}, ${verb} ${last.individual}.`;
  button.addEventListener("click", () => undo(last));
  notice.className = "notice";
  notice.replaceChildren(text, button);
  notice.hidden = false;
  tick();
  state.undoTimer = setInterval(tick, 1000);
  return true;
}

async function undo(item) {
  if (!item || item.imageId == null || Date.now() - item.at >= UNDO_MS) return;
  try {
    await api(`gallery/images/${item.imageId}`, { method: "DELETE" });
  } catch (error) {
    notify(`undo refused: ${error.message}`, true);
    return;
  }
  const imageId = item.imageId;
  state.individuals.delete(item.individual);
  Object.assign(item, { status: "pending", individual: undefined, imageId: undefined, created: undefined, at: undefined });
  save();
  await show(state.queue.indexOf(item));
  notify(`undone: image ${imageId} deleted; ${item.name} is back in the queue`);
}

function notify(message, error = false) {
  clearInterval(state.undoTimer);
  const notice = $("notice");
  notice.className = error ? "notice error" : "notice";
  notice.textContent = message;
  notice.hidden = false;
}

// -- wiring ---------------------------------------------------------------------------------------

$("key").value = sessionStorage.getItem("whaleid-key") || "";
$("key").addEventListener("change", () => {
  const key = $("key").value.trim();
  if (key === (sessionStorage.getItem("whaleid-key") || "")) return;
  sessionStorage.setItem("whaleid-key", key);
  state.individuals.clear();
  state.photoRecords.clear();
  if (state.queue[state.current]) show(state.current);
});
$("files").addEventListener("change", (event) => {
  addFiles([...event.target.files]);
  event.target.value = "";
});
$("clear").addEventListener("click", async () => {
  state.queue = [];
  state.current = -1;
  await clearPhotos();
  save();
  $("notice").hidden = true;
  await show(-1);
});
$("confirm").addEventListener("click", confirmPicked);
$("skip").addEventListener("click", skip);
$("evidence-photo").addEventListener("click", () => cycle(1));
$("new-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  // The API checks the id (pattern, reserved name): its message is the one shown.
  const stored = await register($("new-id").value.trim(), $("new-species").value.trim());
  if (stored) { $("new-id").value = ""; $("new-species").value = ""; $("new-id").blur(); }
});
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const typing = event.target instanceof HTMLInputElement;
  if (typing) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  const key = event.key.toLowerCase();
  if (key >= "1" && key <= "5") pick(Number(key) - 1);
  else if (key === "enter") confirmPicked();
  else if (key === "n") { event.preventDefault(); $("new-id").focus(); }
  else if (key === "s") skip();
  else if (key === "u") undo([...state.queue].filter((it) => it.imageId != null && it.created).sort((a, b) => b.at - a.at)[0]);
  else if (key === "arrowright") cycle(1);
  else if (key === "arrowleft") cycle(-1);
  else return;
  event.preventDefault();
});
new ResizeObserver(() => {
  if (state.answer) drawQuery();
  const img = $("evidence-img"), record = state.photoRecords.get(state.shown?.images[state.shown.index]);
  if (record && img.naturalWidth && !img.hidden) {
    overlay($("evidence-overlay"), img, record.width || img.naturalWidth, record.height || img.naturalHeight);
    if (record.box) rect($("evidence-overlay"), record.box, "gallery-box");
  }
}).observe($("compare"));

load();
show(state.current);
