// whaleid's pages: a little JavaScript for what forms cannot do (keyboard review, zoom, upload progress).
"use strict";

const csrf = () => (document.querySelector('meta[name="csrf"]') || {}).content || "";

async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: { "X-CSRF-Token": csrf(), ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || `HTTP ${response.status}`);
  return data;
}

// ---------------------------------------------------------------- review

function setupReview(root) {
  const photo = Number(root.dataset.photo);
  const status = document.getElementById("review-status");
  const say = (text, bad) => { status.textContent = text; status.classList.toggle("error", !!bad); };
  const go = (url) => { window.location.href = url; };
  const nextUrl = () => (root.dataset.next ? `/review/${root.dataset.next}` : "/review");
  let busy = false;
  let armed = false; // Z pressed once on a photo with nothing to undo: a second Z undoes the tab's last decision

  async function decide(body, label) {
    if (busy) return;
    if (root.dataset.canDecide !== "yes") return say("Deciding needs the reviewer role.", true);
    if (root.dataset.state !== "pending") return say("This photo is already decided: Z undoes that decision.", true);
    busy = true;
    say(`${label}…`);
    try {
      const done = await api("POST", `/api/photos/${photo}/decision`, { ...body, version: Number(root.dataset.version) });
      sessionStorage.setItem("whaleid-last", JSON.stringify({ decision: done.decision, photo, label }));
      say(`${label}: done (decision ${done.decision}).`);
      go(nextUrl());
    } catch (error) {
      say(error.message, true);
      busy = false;
    }
  }

  function confirmRank(rank) {
    const item = root.querySelector(`.candidate[data-rank="${rank}"]`);
    if (!item) return say(`There is no candidate ${rank}.`, true);
    const id = item.dataset.individual;
    if (id === "new_individual") return decide({ kind: "new" }, "New individual");
    return decide({ kind: "confirm", individual: id }, `Confirmed as ${id}`);
  }

  // Z undoes the decision of the photo on screen. On a photo without one, it says which decision it would
  // undo instead (this tab's last, made on another photo) and a second Z does it.
  async function undo() {
    if (busy) return;
    const last = JSON.parse(sessionStorage.getItem("whaleid-last") || "null");
    const own = Number(root.dataset.lastDecision) || null;
    if (own) return undoDecision(own, photo, last && last.decision === own);
    if (!last) return say("This photo has no decision to undo.", true);
    if (!armed) {
      armed = true;
      return say(`This photo has no decision to undo. Press Z again to undo your last one: “${last.label}” on photo ${last.photo}.`);
    }
    return undoDecision(last.decision, last.photo, true);
  }

  async function undoDecision(decision, of, forgetLast) {
    busy = true;
    say(`Undoing the decision on photo ${of}…`);
    try {
      await api("POST", `/api/decisions/${decision}/undo`);
      if (forgetLast) sessionStorage.removeItem("whaleid-last");
      go(`/review/${of}`);
    } catch (error) {
      if (forgetLast) sessionStorage.removeItem("whaleid-last");
      say(error.message, true);
      busy = false;
    }
  }

  const actions = {
    new: () => decide({ kind: "new" }, "New individual"),
    unsure: () => decide({ kind: "unsure" }, "Can't tell"),
    undo,
    next: () => go(nextUrl()),
    previous: () => root.dataset.previous ? go(`/review/${root.dataset.previous}`) : say("This is the first photo waiting.", true),
  };
  document.querySelectorAll("[data-action]").forEach((el) => el.addEventListener("click", (event) => {
    event.preventDefault();
    const action = el.dataset.action;
    if (action === "confirm") confirmRank(Number(el.dataset.rank));
    else actions[action]();
  }));
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || /INPUT|TEXTAREA|SELECT/.test(event.target.tagName)) return;
    const key = event.key.toLowerCase(); // every key works in the comparison too: it is where one decides
    if (key === "escape" && !document.getElementById("compare").hidden) closeCompare();
    else if (/^[1-5]$/.test(key)) confirmRank(Number(key));
    else if (key === "n") actions.new();
    else if (key === "u") actions.unsure();
    else if (key === "z") actions.undo();
    else if (key === "j") actions.next();
    else if (key === "k") actions.previous();
    else if (key === "m") toggleMarks();
    else return;
    event.preventDefault();
  });
  setupCompare(photo);
}

// Side-by-side comparison: the query and a candidate photo, zoomed and panned together. A candidate's photo
// is compared as the model sees both (the crops), with the keypoint pairs that the second stage verified
// marked on both sides by number and colour; M shows or hides them.
const view = { scale: 1, x: 0, y: 0 };
const SVG = "http://www.w3.org/2000/svg";
const NAMES = { aliked: "ALIKED", sift: "SIFT", orb: "ORB", lightglue: "LightGlue", ratio: "ratio test", mutual: "mutual nearest" };
let marksShown = true;

function applyView() {
  for (const id of ["compare-left", "compare-right"]) {
    document.getElementById(id).style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
  }
}

function closeCompare() { document.getElementById("compare").hidden = true; }

function toggleMarks() {
  marksShown = !marksShown;
  for (const side of ["left", "right"]) document.getElementById(`compare-${side}-marks`).style.display = marksShown ? "" : "none";
  sayMatches();
}

// The count of matched points, and what M does now.
function sayMatches(base) {
  const line = document.getElementById("compare-matches");
  if (base !== undefined) line.dataset.base = base;
  line.textContent = line.dataset.base ? `${line.dataset.base} · M ${marksShown ? "hides" : "shows"} them` : "";
}

// An image as large as its half of the screen allows (small crops too), its marks' box the image's own pixels.
function fitImage(img, marks) {
  const box = img.closest(".viewport").getBoundingClientRect();
  const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
  img.style.width = `${img.naturalWidth * scale}px`;
  marks.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
}

// Pair i as a circle and its number at (x, y), in units of the photo's long side.
function drawMarks(marks, img, points) {
  const long = Math.max(img.naturalWidth, img.naturalHeight);
  marks.replaceChildren();
  points.forEach(([x, y], i) => {
    const colour = `hsl(${(i * 137.5) % 360}, 95%, 55%)`;
    const circle = document.createElementNS(SVG, "circle");
    Object.entries({ cx: x * long, cy: y * long, r: long * 0.018, stroke: colour }).forEach(([k, v]) => circle.setAttribute(k, v));
    const label = document.createElementNS(SVG, "text");
    Object.entries({ x: x * long + long * 0.022, y: y * long - long * 0.012, "font-size": long * 0.035 }).forEach(([k, v]) => label.setAttribute(k, v));
    label.textContent = String(i + 1);
    marks.append(circle, label);
  });
}

function loaded(img, url) {
  return new Promise((resolve) => {
    img.onload = () => resolve(img);
    img.onerror = () => resolve(img);
    img.src = url;
  });
}

// Each side says what it shows: the query (which photo, which view) and the candidate (rank, individual).
function setupCompare(photo) {
  const overlay = document.getElementById("compare");
  const query = document.getElementById("query-crop");
  const full = document.getElementById("query-full");
  const matches = document.getElementById("compare-matches");
  let shown = 0; // the latest comparison opened: an earlier one's late answer draws nothing
  const side = (name) => ({
    img: document.getElementById(`compare-${name}-image`),
    marks: document.getElementById(`compare-${name}-marks`),
    label: document.getElementById(`compare-${name}-label`),
  });
  const show = (s, url, label) => {
    s.label.textContent = label;
    s.marks.replaceChildren();
    return loaded(s.img, url).then(() => fitImage(s.img, s.marks));
  };
  async function compare(img) {
    const opened = ++shown;
    const left = side("left");
    const right = side("right");
    const candidate = img.closest(".candidate");
    sayMatches("");
    overlay.hidden = false;
    Object.assign(view, { scale: 1, x: 0, y: 0 });
    applyView();
    if (!candidate) {
      const other = img === query ? full : query;
      await Promise.all([
        show(left, other.dataset.full, `Query: photo ${photo}, ${other.alt}`),
        show(right, img.dataset.full, `Query: photo ${photo}, ${img.alt}`),
      ]);
      return;
    }
    const { rank, individual } = candidate.dataset;
    matches.textContent = "Matching…";
    const [found] = await Promise.all([
      api("GET", `/api/photos/${photo}/matches/${img.dataset.photo}`).catch((error) => ({ error: error.message })),
      show(left, query.src, `Query: photo ${photo}`),
      show(right, img.dataset.crop, `Candidate ${rank}: ${individual} (${rank} confirms)`),
    ]);
    if (opened !== shown) return;
    if (found.error) { matches.textContent = `Matched points unavailable: ${found.error}`; return; }
    if (found.matcher === null) {
      matches.textContent = "No matched points: this catalog's model ranks by the whole photo only (no re-ranking).";
      return;
    }
    const method = `${NAMES[found.detector] || found.detector} + ${NAMES[found.matcher] || found.matcher}`;
    if (!found.count) { matches.textContent = `No matched points between these two photos (${method}).`; return; }
    drawMarks(left.marks, left.img, found.pairs.map((p) => [p[0], p[1]]));
    drawMarks(right.marks, right.img, found.pairs.map((p) => [p[2], p[3]]));
    sayMatches(`${found.count} matched point${found.count === 1 ? "" : "s"} (${method})`);
  }
  document.querySelectorAll("img.zoomable").forEach((img) => img.addEventListener("click", () => compare(img)));
  document.getElementById("compare-close").addEventListener("click", closeCompare);
  let drag = null;
  overlay.addEventListener("wheel", (event) => {
    event.preventDefault();
    const factor = event.deltaY < 0 ? 1.15 : 1 / 1.15;
    view.scale = Math.min(20, Math.max(1, view.scale * factor));
    if (view.scale === 1) Object.assign(view, { x: 0, y: 0 });
    applyView();
  }, { passive: false });
  overlay.addEventListener("pointerdown", (event) => { drag = { x: event.clientX - view.x, y: event.clientY - view.y }; });
  overlay.addEventListener("pointermove", (event) => {
    if (!drag) return;
    Object.assign(view, { x: event.clientX - drag.x, y: event.clientY - drag.y });
    applyView();
  });
  window.addEventListener("pointerup", () => { drag = null; });
  overlay.addEventListener("dragstart", (event) => event.preventDefault());
}

// ---------------------------------------------------------------- upload

function sendFile(job, file, row) {
  return new Promise((resolve) => {
    const form = new FormData();
    form.append("file", file);
    const request = new XMLHttpRequest();
    request.open("POST", `/api/uploads/${job}/photos`);
    request.setRequestHeader("X-CSRF-Token", csrf());
    const bar = row.querySelector("progress");
    request.upload.addEventListener("progress", (event) => { if (event.lengthComputable) bar.value = event.loaded / event.total; });
    request.addEventListener("load", () => {
      let detail = "";
      try { detail = JSON.parse(request.responseText).detail || ""; } catch (error) { detail = request.statusText; }
      const ok = request.status < 300;
      bar.value = 1;
      row.classList.add(ok ? "ok" : "refused");
      row.querySelector(".outcome").textContent = ok ? "received" : `refused: ${detail}`;
      resolve(ok);
    });
    request.addEventListener("error", () => {
      row.classList.add("refused");
      row.querySelector(".outcome").textContent = "network error";
      resolve(false);
    });
    request.send(form);
  });
}

async function watchJob(job) {
  const status = document.getElementById("job-status");
  for (;;) {
    const state = await api("GET", `/api/jobs/${job}`);
    const p = state.progress;
    status.textContent = `Processing: ${p.stage} ${p.done}/${p.total}`;
    if (state.state === "done") {
      const r = state.result;
      status.textContent = `Done: ${r.added} photos added, ${r.duplicates} already in the catalog, ${r.rejected.length} could not be used.`;
      if (r.added) { // only photos added wait for review
        const link = document.getElementById("review-link");
        link.href = `/review?encounter=${state.encounter}`;
        link.hidden = false;
      }
      return;
    }
    if (state.state === "failed") { status.textContent = `Failed: ${state.error}`; return; }
    await new Promise((resolve) => setTimeout(resolve, 700));
  }
}

function setupUpload(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = document.getElementById("upload-button");
    button.disabled = true;
    const fields = Object.fromEntries(["date", "place", "observer", "notes"].map((k) => [k, form.elements[k].value || null]));
    for (const k of ["latitude", "longitude"]) fields[k] = form.elements[k].value === "" ? null : Number(form.elements[k].value);
    const files = Array.from(document.getElementById("photos").files);
    const list = document.getElementById("file-list");
    const status = document.getElementById("job-status");
    document.getElementById("upload-status").hidden = false;
    document.getElementById("review-link").hidden = true; // until this upload's job is done with photos added
    list.replaceChildren();
    try {
      const job = (await api("POST", "/api/uploads", fields)).id;
      let received = 0;
      for (const file of files) {
        const row = document.createElement("li");
        row.innerHTML = '<span class="name"></span> <progress max="1" value="0"></progress> <span class="outcome"></span>';
        row.querySelector(".name").textContent = file.name;
        list.appendChild(row);
        received += (await sendFile(job, file, row)) ? 1 : 0;
      }
      if (!received) { status.textContent = "No photo could be used."; button.disabled = false; return; }
      await api("POST", `/api/uploads/${job}/start`);
      await watchJob(job);
    } catch (error) {
      status.textContent = error.message;
    }
    button.disabled = false;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const review = document.getElementById("review");
  if (review) setupReview(review);
  const upload = document.getElementById("upload-form");
  if (upload) setupUpload(upload);
});
