"""The `workbench teach` page: self-contained (no CDN, works offline), over the HTTP API.

Everything it shows comes from the API the server documents (`/api/state`, the frame and the
thumbnails as JPEGs), and everything it does goes through it; class names from the server are
put into the page as text, never as markup. The access token, when there is one, is in the
page's own address and sent back with every request.
"""

from __future__ import annotations

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="workbench teach">
<title>workbench teach</title>
<style>
:root{--fg:#1d2330;--muted:#5c6577;--line:#d8dce3;--accent:#2764c5;--bg:#fff;--card:#f6f7f9}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,sans-serif;color:var(--fg);
background:var(--bg)}header{padding:12px 20px;border-bottom:1px solid var(--line)}
h1{font-size:1.2rem;margin:0}main{display:flex;flex-wrap:wrap;gap:20px;padding:16px 20px}
#live{flex:1 1 420px;max-width:640px}#stream{width:100%;background:#000;border-radius:6px;
min-height:200px;display:block}#prediction{font-size:1.4rem;font-weight:650;margin:8px 0}
.bar{display:flex;align-items:center;gap:8px;margin:4px 0}.bar .name{width:30%;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}.bar .track{flex:1;height:14px;background:var(--card);
border-radius:7px;overflow:hidden}.bar .fill{height:100%;background:var(--accent)}
.bar .value{width:3.5em;text-align:right;font-variant-numeric:tabular-nums}
#classes{flex:1 1 360px}.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px;
margin-bottom:12px;background:var(--card)}.card h2{font-size:1rem;margin:0 0 6px;display:flex;
justify-content:space-between;gap:8px}.thumbs{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0}
.thumbs img{width:48px;height:48px;object-fit:cover;border-radius:4px;cursor:pointer}
button{font:inherit;padding:6px 12px;border-radius:6px;border:1px solid var(--line);
background:#fff;cursor:pointer}button.record{background:var(--accent);color:#fff;border:0}
button.record.on{background:#c0392b}input{font:inherit;padding:6px;border:1px solid var(--line);
border-radius:6px}#status{color:var(--muted);min-height:1.4em}.muted{color:var(--muted)}
</style></head>
<body>
<header><h1>workbench teach</h1><div id="status" role="status"></div></header>
<main>
<section id="live" aria-label="camera">
  <img id="stream" alt="the camera's newest frame">
  <div id="prediction">-</div>
  <div id="bars"></div>
  <p class="muted"><span id="fps">0</span> frames/s from <span id="source"></span></p>
  <p><button id="save">Save dataset and model</button></p>
  <div id="saved"></div>
</section>
<section id="classes" aria-label="classes">
  <form id="add"><input id="newclass" placeholder="class name" required>
  <button type="submit">Add class</button></form>
  <div id="cards"></div>
</section>
</main>
<script>
(function () {
  "use strict";
  var token = new URLSearchParams(location.search).get("token") || "__TOKEN__";
  var headers = {"X-Workbench-Token": token};
  function url(path) { return path + (path.indexOf("?") < 0 ? "?" : "&") + "token=" +
    encodeURIComponent(token); }
  function api(method, path, body) {
    var init = {method: method, headers: Object.assign({}, headers)};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body);
    }
    return fetch(url(path), init).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) { throw new Error(data.error || ("HTTP " + r.status)); } return data;
      });
    });
  }
  function say(text) { document.getElementById("status").textContent = text; }
  function el(tag, text, cls) {
    var e = document.createElement(tag); if (text !== undefined) { e.textContent = text; }
    if (cls) { e.className = cls; } return e;
  }
  var shown = "";
  function render(state) {
    document.getElementById("prediction").textContent = state.prediction || "-";
    document.getElementById("fps").textContent = state.fps;
    document.getElementById("source").textContent = state.source;
    var bars = document.getElementById("bars"); bars.textContent = "";
    state.classes.forEach(function (c) {
      var score = state.scores[c.name] || 0, bar = el("div", undefined, "bar");
      var track = el("div", undefined, "track"), fill = el("div", undefined, "fill");
      fill.style.width = (100 * score).toFixed(1) + "%"; track.appendChild(fill);
      bar.appendChild(el("span", c.name, "name")); bar.appendChild(track);
      bar.appendChild(el("span", (100 * score).toFixed(0) + "%", "value"));
      bars.appendChild(bar);
    });
    var key = JSON.stringify(state.classes);
    if (key === shown) { return; }
    shown = key;
    var cards = document.getElementById("cards"); cards.textContent = "";
    state.classes.forEach(function (c) {
      var card = el("div", undefined, "card"), head = el("h2");
      head.appendChild(el("span", c.name));
      head.appendChild(el("span", c.examples + " examples" +
        (c.unsaved ? " (" + c.unsaved + " unsaved)" : ""), "muted count"));
      card.appendChild(head);
      var thumbs = el("div", undefined, "thumbs");
      for (var i = Math.max(0, c.examples - 12); i < c.examples; i++) {
        var img = el("img"); img.alt = "example " + (i + 1) + " (click to delete)";
        img.src = url("/api/classes/" + encodeURIComponent(c.name) + "/examples/" + i + ".jpg");
        img.dataset.index = i;
        img.addEventListener("click", function (event) {
          api("DELETE", "/api/classes/" + encodeURIComponent(c.name) + "/examples/" +
            event.target.dataset.index).then(refresh, function (e) { say(e.message); });
        });
        thumbs.appendChild(img);
      }
      card.appendChild(thumbs);
      var record = el("button", "Hold to record", "record"), timer = null;
      record.setAttribute("aria-label", "record examples of " + c.name);
      function add() {
        api("POST", "/api/classes/" + encodeURIComponent(c.name) + "/examples")
          .then(refresh, function (e) { say(e.message); });
      }
      function start(event) {
        event.preventDefault(); if (timer) { return; }
        record.classList.add("on"); add(); timer = setInterval(add, 200);
      }
      function stop() { if (timer) { clearInterval(timer); timer = null; }
        record.classList.remove("on"); }
      record.addEventListener("mousedown", start); record.addEventListener("touchstart", start);
      ["mouseup", "mouseleave", "touchend", "touchcancel"].forEach(function (name) {
        record.addEventListener(name, stop);
      });
      record.addEventListener("keydown", function (event) {
        if (event.key === " " || event.key === "Enter") { add(); event.preventDefault(); }
      });
      var remove = el("button", "Delete class");
      remove.addEventListener("click", function () {
        api("DELETE", "/api/classes/" + encodeURIComponent(c.name))
          .then(refresh, function (e) { say(e.message); });
      });
      card.appendChild(record); card.appendChild(document.createTextNode(" "));
      card.appendChild(remove); cards.appendChild(card);
    });
  }
  function refresh() {
    return api("GET", "/api/state").then(render, function (e) { say(e.message); });
  }
  document.getElementById("add").addEventListener("submit", function (event) {
    event.preventDefault();
    var input = document.getElementById("newclass");
    api("POST", "/api/classes", {name: input.value}).then(function () {
      input.value = ""; say(""); return refresh();
    }, function (e) { say(e.message); });
  });
  document.getElementById("save").addEventListener("click", function () {
    say("saving: writing the examples, then training as workbench imprint does...");
    api("POST", "/api/save").then(function (done) {
      var out = document.getElementById("saved"); out.textContent = "";
      out.appendChild(el("p", "Model " + done.model + ", labels " + done.labels +
        ", report " + done.html));
      out.appendChild(el("p", "Held-out top-1: " + (done.top1 === null ? "-" :
        (100 * done.top1).toFixed(1) + "%") + " on " + done.held_out_images + " images"));
      say("saved " + done.written.length + " new examples"); shown = ""; return refresh();
    }, function (e) { say(e.message); });
  });
  var stream = document.getElementById("stream");
  function nextFrame() { stream.src = url("/frame.jpg?n=" + Date.now()); }
  stream.addEventListener("load", function () { setTimeout(nextFrame, 100); });
  stream.addEventListener("error", function () { setTimeout(nextFrame, 500); });
  nextFrame();
  refresh();
  setInterval(refresh, 250);
})();
</script>
</body></html>
"""


def teach_page(token: str) -> str:
    """The page, with the access token it sends back (letters, digits, - and _ only)."""
    if not all(ch.isalnum() or ch in "-_" for ch in token):
        raise ValueError("token must be URL-safe")
    return PAGE.replace("__TOKEN__", token)
