// Orchestra dashboard: live regions over server-sent events (orchestra/web/live.py).
// An element with data-live="/live/..." subscribes to that stream; each event is a JSON object
// {element id: inner HTML}, and those elements are replaced. No framework, no build step.
"use strict";
(function () {
  function subscribe(url) {
    var source = new EventSource(url);
    source.onmessage = function (event) {
      var fragments = JSON.parse(event.data);
      Object.keys(fragments).forEach(function (id) {
        var el = document.getElementById(id);
        if (el) { el.innerHTML = fragments[id]; }
      });
      document.body.setAttribute("data-live-updated", String(Date.now()));
    };
    source.onerror = function () {
      document.body.classList.add("live-lost");
    };
    source.onopen = function () {
      document.body.classList.remove("live-lost");
    };
  }
  function start() {
    var seen = {};
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var url = el.getAttribute("data-live");
      if (!seen[url]) { seen[url] = true; subscribe(url); }
    });
    // A select or checkbox in a filter form submits it when changed (the form works without JS too).
    document.querySelectorAll("form.filters select, form.filters input[type=checkbox]").forEach(function (el) {
      el.addEventListener("change", function () { el.form.submit(); });
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
