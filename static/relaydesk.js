// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.copy");
    if (!button) return;
    var source = document.getElementById(button.dataset.copy);
    if (!source) return;
    var text = source.innerText;
    // The words come translated from the page (data-copied, data-copy-failed).
    var label = button.dataset.label || (button.dataset.label = button.textContent);
    var done = function () {
      button.textContent = button.dataset.copied || "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    };
    var failed = function () {
      button.textContent = button.dataset.copyFailed || "Select and copy by hand";
      setTimeout(function () { button.textContent = label; }, 3000);
    };
    // The old way: works over plain HTTP and when the async API is refused
    // (document not focused, permission policy).
    var fallback = function () {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed"; area.style.opacity = "0";
      document.body.appendChild(area); area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      button.focus();
      (ok ? done : failed)();
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else {
      fallback();
    }
  });

  // Quick DNS check while typing the FQDN and addresses (server form).
  var form = document.querySelector("form[data-quick-check]");
  if (!form) return;
  var panel = document.getElementById("quick-check");
  var timer = null;
  function value(name) { var el = form.elements[name]; return el ? el.value : ""; }
  // Labels of the check ids and statuses, from the page (checks/labels.py): the same
  // words as the request page, never the raw ids.
  var labels = {};
  var labelData = document.getElementById("check-labels");
  if (labelData) { try { labels = JSON.parse(labelData.textContent); } catch (e) { labels = {}; } }
  function label(kind, id) { return (labels[kind] && labels[kind][id]) || id; }
  // An input error goes under its own field, like the server's (aria-invalid and
  // aria-describedby), and goes away when the value is fixed.
  function fieldErrors(errors) {
    ["fqdn", "ipv4", "ipv6"].forEach(function (name) {
      var input = form.elements[name];
      if (!input) return;
      var id = input.id + "_quick_error";
      var old = document.getElementById(id);
      if (old) old.parentNode.removeChild(old);
      var described = (input.getAttribute("aria-describedby") || "").split(" ").filter(function (x) { return x && x !== id; });
      var messages = (errors && errors[name]) || [];
      if (messages.length) {
        var box = document.createElement("div");
        box.id = id; box.className = "quick-error";
        messages.forEach(function (m) {
          var p = document.createElement("p"); p.className = "error"; p.textContent = m; box.appendChild(p);
        });
        input.parentNode.appendChild(box);
        described.push(id);
        input.setAttribute("aria-invalid", "true");
        input.parentNode.classList.add("has-error");
      } else if (!input.parentNode.querySelector(".error")) {
        input.removeAttribute("aria-invalid");
        input.parentNode.classList.remove("has-error");
      }
      if (described.length) input.setAttribute("aria-describedby", described.join(" "));
      else input.removeAttribute("aria-describedby");
    });
  }
  function render(report) {
    var box = panel.querySelector(".results");
    box.textContent = "";
    fieldErrors(report.errors);
    (report.checks || []).forEach(function (c) {
      var p = document.createElement("p");
      var badge = document.createElement("span");
      badge.className = "verdict verdict-" + c.status; badge.textContent = label("statuses", c.status);
      p.appendChild(badge);
      p.appendChild(document.createTextNode(" " + label("checks", c.id) + " (" + c.subject + "): " + (c.detail_translated || c.detail)));
      box.appendChild(p);
    });
    if (report.detail) { var d = document.createElement("p"); d.className = "muted"; d.textContent = report.detail; box.appendChild(d); }
    if (report.errors && !(report.checks || []).length) {
      var e = document.createElement("p"); e.className = "muted";
      e.textContent = panel.dataset.fixFirst || "Fix the marked fields to see the DNS check.";
      box.appendChild(e);
    }
    panel.hidden = false;
  }
  function run() {
    if (!value("fqdn")) return;
    var token = form.elements.csrfmiddlewaretoken.value;
    fetch(form.dataset.quickCheck, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": token},
      body: JSON.stringify({fqdn: value("fqdn"), ipv4: value("ipv4"), ipv6: value("ipv6")})
    }).then(function (r) { return r.json(); }).then(render).catch(function () {});
  }
  ["fqdn", "ipv4", "ipv6"].forEach(function (name) {
    var el = form.elements[name];
    if (el) el.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(run, 600); });
  });
})();

// Live status (requests_app/live_views.py): while a request's DNS checks run, ask the
// server every few seconds and reload the page once its state or check attempt changes,
// so the results appear without a manual reload. Text typed but not yet sent is never
// thrown away: then the page says the results are in and offers the reload instead.
// Meanwhile it shows the server's sentence of what the checks are doing (running, or
// waiting for a worker since when, and that nothing is lost).
// Without JavaScript the page's <noscript> refresh does the same.
(function () {
  "use strict";
  var box = document.querySelector("[data-live-status]");
  if (!box || !window.fetch) return;
  var url = box.dataset.liveStatus;
  var shownState = box.dataset.state;
  var shownAttempts = box.dataset.attempts;
  var delay = 3000;
  function unsentText() {
    var fields = document.querySelectorAll("main textarea, main input[type=text], main input:not([type])");
    return Array.prototype.some.call(fields, function (el) { return el.value !== el.defaultValue; });
  }
  function resultsAreIn() {
    if (!unsentText()) { window.location.reload(); return; }
    var note = document.createElement("p");
    note.className = "msg msg-info live-status-ready";
    note.setAttribute("role", "status");
    note.textContent = (box.dataset.liveReady || "The check results are in.") + " ";
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = box.dataset.liveReload || "Show them";
    button.addEventListener("click", function () { window.location.reload(); });
    note.appendChild(button);
    box.parentNode.replaceChild(note, box);
  }
  function tick() {
    if (document.hidden) { setTimeout(tick, delay); return; }  // no polling in a background tab
    fetch(url, {credentials: "same-origin", cache: "no-store", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (s) {
        if (s.state !== shownState || String(s.check_attempts) !== shownAttempts) { resultsAreIn(); return; }
        if (s.message && s.message !== box.textContent) box.textContent = s.message;  // e.g. waiting for a worker
        delay = (s.poll_seconds || 3) * 1000;
        setTimeout(tick, delay);
      })
      .catch(function () { delay = Math.min(delay * 2, 60000); setTimeout(tick, delay); });  // server away: back off
  }
  setTimeout(tick, delay);
})();

// Confirmation of what cannot be undone (buttons with data-confirm: withdraw, reject,
// revoke, hand over, mark done) in a <dialog>. Without this script the server asks on a
// page of its own; either way it acts only on the POST that carries confirm=1.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-confirm]");
    if (!button || !button.form || typeof HTMLDialogElement === "undefined") return;
    event.preventDefault();
    var form = button.form;
    var dialog = document.createElement("dialog");
    dialog.className = "confirm-dialog";
    dialog.setAttribute("aria-labelledby", "confirm-dialog-title");
    dialog.setAttribute("aria-describedby", "confirm-dialog-text");
    var title = document.createElement("h2");
    title.id = "confirm-dialog-title";
    title.textContent = button.dataset.confirmTitle || button.textContent.trim();
    var text = document.createElement("p");
    text.id = "confirm-dialog-text";
    text.textContent = button.dataset.confirm;
    var buttons = document.createElement("p");
    buttons.className = "buttons";
    var yes = document.createElement("button");
    yes.type = "button"; yes.className = "danger"; yes.textContent = button.textContent.trim();
    var no = document.createElement("button");
    no.type = "button"; no.textContent = form.dataset.cancel || "Cancel";
    buttons.appendChild(yes); buttons.appendChild(no);
    dialog.appendChild(title); dialog.appendChild(text); dialog.appendChild(buttons);
    var confirmed = false;
    yes.addEventListener("click", function () {
      confirmed = true;
      var flag = document.createElement("input");
      flag.type = "hidden"; flag.name = "confirm"; flag.value = "1";
      form.appendChild(flag);
      dialog.close();
      if (form.requestSubmit) { form.requestSubmit(button); } else { form.submit(); }
    });
    no.addEventListener("click", function () { dialog.close(); });
    dialog.addEventListener("close", function () {
      dialog.parentNode.removeChild(dialog);
      if (!confirmed) button.focus();
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    no.focus();  // the safe choice has the focus: Enter does not destroy anything
  });
})();

// Tables on a phone: each cell gets its column's header as a label (data-label), and
// the CSS shows rows as cards below 700 px. The roles keep the table's meaning for
// screen readers once the cells are displayed as blocks.
(function () {
  "use strict";
  Array.prototype.forEach.call(document.querySelectorAll("table.grid"), function (table) {
    var heads = table.querySelectorAll("thead th");
    if (!heads.length) return;
    var names = Array.prototype.map.call(heads, function (th) { return th.textContent.trim(); });
    table.classList.add("stackable");
    table.setAttribute("role", "table");
    Array.prototype.forEach.call(table.querySelectorAll("thead, tbody"), function (g) { g.setAttribute("role", "rowgroup"); });
    Array.prototype.forEach.call(heads, function (th) { th.setAttribute("role", "columnheader"); });
    Array.prototype.forEach.call(table.querySelectorAll("tr"), function (tr) {
      tr.setAttribute("role", "row");
      var column = 0;
      Array.prototype.forEach.call(tr.children, function (cell) {
        if (cell.parentNode.parentNode.tagName === "THEAD") return;
        cell.setAttribute("role", cell.tagName === "TH" ? "rowheader" : "cell");
        var span = parseInt(cell.getAttribute("colspan") || "1", 10);
        if (span === 1 && names[column]) cell.setAttribute("data-label", names[column]);
        column += span;
      });
    });
  });
})();
