// hoist dashboard: live parts of a page, fed by server-sent events. Every fragment is
// rendered (and escaped) by the agent; this file only puts it in place.
"use strict";
document.querySelectorAll("[data-sse]").forEach(function (el) {
  var es = new EventSource(el.getAttribute("data-sse"));
  es.onmessage = function (e) {
    el.innerHTML = e.data;
  };
});
document.querySelectorAll("[data-sse-add]").forEach(function (el) {
  var es = new EventSource(el.getAttribute("data-sse-add"));
  var where = el.getAttribute("data-at") || "beforeend";
  es.onmessage = function (e) {
    el.insertAdjacentHTML(where, e.data);
    while (el.children.length > 2000) {
      el.removeChild(where === "beforeend" ? el.firstElementChild : el.lastElementChild);
    }
    if (where === "beforeend" && el.hasAttribute("data-follow")) {
      el.scrollTop = el.scrollHeight;
    }
  };
});
