// Live updates for the pages that opt in (`data-live-secs` on <body>: every page behind the login): every few
// seconds the page is fetched again and its <main> swapped in, unless the reader is in one of its forms. Without JavaScript
// every page reads the same; a reload shows what this would have.
(function () {
  "use strict";
  var secs = Number(document.body.getAttribute("data-live-secs") || 0);
  if (!secs) return;
  setInterval(function () {
    if (document.hidden) return;
    var active = document.activeElement;
    if (active && active.closest && active.closest("main form")) return;
    fetch(location.href, { credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok || r.redirected) throw new Error("no page");
        return r.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("main"), old = document.querySelector("main");
        if (fresh && old) old.replaceWith(document.importNode(fresh, true));
        var ms = doc.getElementById("render-ms"), here = document.getElementById("render-ms");
        if (ms && here) here.textContent = ms.textContent;
      })
      .catch(function () { /* logged out or unreachable: the next tick tries again */ });
  }, secs * 1000);
})();
