// mcmfh search page: plain JS, no build step, no external resources. All item text goes through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const THUMB_SIDE = 256;
const VIEW_SIDE = 1024;
let objectUrls = [];
let lastCard = null;
let searchSeq = 0;  // only the newest search may fill the grid (an older, slower answer is dropped)
let queryUrl = null;  // the uploaded query image, shown beside the results until the next search

function token() { return sessionStorage.getItem("mcmfh-token"); }

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set("Authorization", "Bearer " + token());
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("token-form").hidden = false;
    $("token").focus();
    throw new Error("This server needs an access token.");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadImage(img, url) {
  // Images go through fetch so the bearer token is sent; <img src> could not carry it.
  try {
    const blob = await (await api(url)).blob();
    const objectUrl = URL.createObjectURL(blob);
    objectUrls.push(objectUrl);
    img.src = objectUrl;
  } catch (_) {
    img.alt = "image unavailable";
  }
}

function labelList(labels) {
  const ul = document.createElement("ul");
  ul.className = "labels";
  ul.setAttribute("aria-label", "Labels");
  for (const label of labels) {
    const li = document.createElement("li");
    li.textContent = label;
    ul.appendChild(li);
  }
  return ul;
}

function similarity(hit) {
  return hit.score === null || hit.score === undefined ? "" : ` · similarity ${hit.score.toFixed(3)}`;
}

function memberList(members, owner) {
  // The items of a case, each a button that opens it (inside a <details>: opened on demand).
  const ul = document.createElement("ul");
  for (const member of members) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = member.id;
    button.textContent = `${member.id}${member.image_url ? "" : " (no image)"}: ${member.text}`;
    button.setAttribute("aria-label", `Open item ${member.id} of ${owner}`);
    button.addEventListener("click", () => openItem(member.id, button));
    li.appendChild(button);
    ul.appendChild(li);
  }
  return ul;
}

function foldable(className, summaryText, members, owner) {
  const details = document.createElement("details");
  details.className = className;
  const summary = document.createElement("summary");
  summary.textContent = summaryText;
  details.append(summary, memberList(members, owner));
  return details;
}

function caseTitle(text) {
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = text;
  return title;
}

function card(hit, rank) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "card";
  button.dataset.id = hit.id;
  const scored = similarity(hit);
  button.setAttribute("aria-label", `Result ${rank}: ${hit.id}, Hamming distance ${hit.distance}${scored}. Open item.`);
  if (hit.image_url) {
    const img = document.createElement("img");
    img.alt = `Image of ${hit.id}`;
    loadImage(img, `${hit.image_url}?max_side=${THUMB_SIDE}`);
    button.appendChild(img);
  } else {
    const none = document.createElement("div");
    none.className = "noimg";
    none.textContent = "no image";
    button.appendChild(none);
  }
  const distance = document.createElement("span");
  distance.className = "distance";
  // Results arrive in the order to show: by re-scored similarity (two-stage), else by Hamming distance.
  distance.textContent = `#${rank}${scored} · distance ${hit.distance} · ${hit.id}`;
  const caption = document.createElement("span");
  caption.className = "caption";
  caption.textContent = hit.text;
  const study = [hit.modality, hit.body_part, hit.study_date].filter(Boolean).join(" · ");
  const parts = [distance, caption, labelList(hit.labels)];
  if (hit.title) {  // the case title or diagnosis, where the archive has one
    parts.splice(1, 0, caseTitle(hit.title));
  }
  if (hit.study_id) {
    const which = document.createElement("span");
    which.className = "case";
    which.textContent = `Case ${hit.study_id}`;
    parts.splice(1, 0, which);
  }
  if (study) {
    const meta = document.createElement("span");
    meta.className = "study";
    meta.textContent = study;
    parts.splice(2, 0, meta);
  }
  button.append(...parts);
  button.addEventListener("click", () => openItem(hit.id, button));
  li.appendChild(button);
  if (hit.viewer_url && /^https?:\/\//.test(hit.viewer_url)) {  // a link beside the card: no link in a button
    const link = document.createElement("a");
    link.className = "viewer";
    link.href = hit.viewer_url;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    link.textContent = "Open study in the PACS viewer";
    link.setAttribute("aria-label", `Open the study of ${hit.id} in the PACS viewer`);
    li.appendChild(link);
  }
  const others = hit.others || [];
  if (others.length) {  // grouped results: the rest of the case, one click away
    li.appendChild(foldable("more", `${others.length} more in this case`, others, `case ${hit.study_id}`));
  }
  const duplicates = hit.duplicates || [];
  if (duplicates.length) {
    const same = document.createElement("p");
    same.className = "more";
    same.textContent = `${duplicates.length} more with the same text or image: ${duplicates.join(", ")}`;
    li.appendChild(same);
  }
  return li;
}

function studyCard(hit, rank) {
  // One card per study: its members' images (each opens that item) and its report(s), a shared report once.
  const li = document.createElement("li");
  const box = document.createElement("article");
  box.className = "study-card";
  box.dataset.study = hit.study_id;
  box.setAttribute("aria-label", `Result ${rank}: study ${hit.study_id}, Hamming distance ${hit.distance}` +
    `${similarity(hit)}, ${hit.members.length} item(s)`);
  const title = document.createElement("h3");
  title.textContent = `Study ${hit.study_id}`;
  const distance = document.createElement("span");
  distance.className = "distance";
  distance.textContent = `#${rank}${similarity(hit)} · distance ${hit.distance} · ${hit.members.length} item(s)`;
  const thumbs = document.createElement("div");
  thumbs.className = "thumbs";
  for (const member of hit.members.filter((m) => m.image_url)) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = member.id;
    button.setAttribute("aria-label", `Open item ${member.id} of study ${hit.study_id}`);
    const img = document.createElement("img");
    img.alt = `Image of ${member.id}`;
    loadImage(img, `${member.image_url}?max_side=${THUMB_SIDE}`);
    button.appendChild(img);
    button.addEventListener("click", () => openItem(member.id, button));
    thumbs.appendChild(button);
  }
  const reports = document.createElement("ul");
  reports.className = "reports";
  reports.setAttribute("aria-label", "Reports");
  for (const text of [...new Set(hit.members.map((m) => m.text))]) {
    const report = document.createElement("li");
    report.className = "caption";
    report.textContent = text;
    reports.appendChild(report);
  }
  const labels = [...new Set(hit.members.flatMap((m) => m.labels))];
  const members = foldable("members", `Open the ${hit.members.length} item(s) of this study`, hit.members,
    `study ${hit.study_id}`);
  box.append(title, ...(hit.title ? [caseTitle(hit.title)] : []), distance, thumbs, reports, labelList(labels),
    members);
  li.appendChild(box);
  return li;
}

function render(payload, what, seq) {
  if (seq !== searchSeq) return;
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls = [];
  const list = $("results");
  const studies = payload.target === "studies";
  list.replaceChildren(...payload.results.map((hit, i) => (studies ? studyCard : card)(hit, i + 1)));
  const noun = studies ? "studies" : "results";
  setStatus(`${payload.results.length} ${noun} for ${what} in ${payload.took_ms.toFixed(1)} ms`);
}

function target() { return $("target-row").hidden ? "items" : $("target").value; }

function perStudy() {
  // Only where the archive has studies (the row is shown) and single items are asked for: 1 groups by case, 0 is raw.
  if ($("target-row").hidden || target() !== "items") return {};
  return { per_study: $("per-case").checked ? 1 : 0 };
}

function showQuery(text, file) {
  if (queryUrl) URL.revokeObjectURL(queryUrl);
  queryUrl = file ? URL.createObjectURL(file) : null;
  const img = $("query-image");
  img.hidden = !queryUrl;
  if (queryUrl) img.src = queryUrl; else img.removeAttribute("src");
  $("query-text").textContent = text;
  $("query-view").hidden = false;
}

function k() { return Number.parseInt($("k").value, 10) || 12; }

function filters() {
  const out = {};
  if (target() === "studies") return out;  // PACS filters narrow item search only
  if ($("modality").value) out.modality = $("modality").value;
  if ($("body-part").value) out.body_part = $("body-part").value;
  return out;
}

async function loadFacets() {
  try {
    const f = await (await api("/facets")).json();
    for (const [id, values] of [["modality", f.modality], ["body-part", f.body_part]]) {
      const select = $(id);
      select.replaceChildren(select.options[0]);
      for (const v of values) {
        const option = document.createElement("option");
        option.value = v;
        option.textContent = v;
        select.appendChild(option);
      }
    }
    $("filters").hidden = !(f.modality.length || f.body_part.length);
  } catch (_) {
    $("filters").hidden = true;  // an older server without /facets, or no token yet: search works unfiltered
  }
}

async function searchText(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) { setStatus("Type a query first.", true); return; }
  setStatus("Searching…");
  const seq = ++searchSeq;
  showQuery(query, null);
  try {
    const response = await api("/search/text", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query, k: k(), target: target(), ...perStudy(), ...filters() }),
    });
    render(await response.json(), "the text query", seq);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function searchImage(file) {
  if (!file) return;
  setStatus(`Searching with ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  form.append("k", String(k()));
  form.append("target", target());
  for (const [name, value] of Object.entries({ ...perStudy(), ...filters() })) form.append(name, String(value));
  const seq = ++searchSeq;
  showQuery(`Image: ${file.name}`, file);
  try {
    const response = await api("/search/image", { method: "POST", body: form });
    render(await response.json(), file.name, seq);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function openItem(id, from) {
  lastCard = from;
  try {
    const item = await (await api(`/items/${encodeURIComponent(id)}`)).json();
    $("item-title").textContent = item.id;
    $("item-text").textContent = item.text;
    $("item-labels").replaceChildren(...labelList(item.labels).childNodes);
    const img = $("item-image");
    img.removeAttribute("src");
    img.alt = item.image_url ? `Image of ${item.id}` : "";
    img.hidden = !item.image_url;
    if (item.image_url) loadImage(img, `${item.image_url}?max_side=${VIEW_SIDE}`);
    $("item-view").showModal();
    $("item-close").focus();
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function loadHealth() {
  try {
    const h = await (await api("/health")).json();
    $("k").max = String(h.max_k);
    $("target-row").hidden = !h.studies;  // an archive with studies is searched by study unless asked otherwise
    syncPerCase();
    $("model").textContent = `${h.model}, ${h.bits}-bit codes, ${h.items} items` + (h.name ? ` (${h.name})` : "");
  } catch (error) {
    $("model").textContent = error.message;
  }
}

function setupDrop() {
  const drop = $("drop");
  const file = $("file");
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); file.click(); }
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    searchImage(event.dataTransfer.files[0]);
  });
  file.addEventListener("change", () => { searchImage(file.files[0]); file.value = ""; });
}

function syncPerCase() { $("per-case-label").hidden = target() !== "items"; }

document.addEventListener("DOMContentLoaded", () => {
  $("text-form").addEventListener("submit", searchText);
  $("target").addEventListener("change", syncPerCase);
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("mcmfh-token", $("token").value);
    $("token-form").hidden = true;
    setStatus("Token set.");
    loadHealth();
    loadFacets();
  });
  $("item-view").addEventListener("close", () => { if (lastCard) lastCard.focus(); });
  setupDrop();
  loadHealth();
  loadFacets();
  $("query").focus();
});
