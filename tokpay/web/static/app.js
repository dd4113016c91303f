// TokPay web behaviour: the balance chart, the time zone, payment rows, one-shot forms,
// and plain-words messages when an htmx action is refused. Every page works without it.
(function () {
  "use strict";

  let chart = null;

  function money(cents) {
    const sign = cents < 0 ? "-" : "";
    const abs = Math.abs(cents);
    const whole = Math.floor(abs / 100).toLocaleString("en-US");
    return sign + "$" + whole + "." + String(abs % 100).padStart(2, "0");
  }

  // The server shows times in the zone this cookie names; the chart draws in the
  // browser's own zone, so both agree once the cookie is set.
  function syncTimeZone() {
    let zone = "UTC";
    try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) { /* keep UTC */ }
    const current = (document.cookie.match(/(?:^|; )tz=([^;]*)/) || [])[1];
    if (current !== encodeURIComponent(zone)) {
      document.cookie = "tz=" + encodeURIComponent(zone) + "; path=/; max-age=31536000; SameSite=Lax";
    }
    const note = document.getElementById("tz-note");
    if (note && note.dataset.tz !== zone && typeof htmx !== "undefined") {
      // Rendered before the server knew the zone: fetch the list again, in it.
      htmx.ajax("GET", "/transactions" + location.search, { target: "#tx-results", swap: "innerHTML" });
    }
  }

  async function drawChart() {
    const canvas = document.getElementById("balance-chart");
    if (!canvas || typeof Chart === "undefined") return;
    const response = await fetch("/chart.json", { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const data = await response.json();
    const points = data.points.map((p) => ({ x: p.t, y: p.balance }));
    if (points.length) {
      canvas.parentElement.hidden = false;
      const empty = document.getElementById("chart-empty");
      if (empty) empty.hidden = true;
    }
    canvas.dataset.points = String(points.length);
    if (chart) {
      chart.data.datasets[0].data = points;
      chart.update();
      return;
    }
    chart = new Chart(canvas, {
      type: "line",
      data: { datasets: [{ label: "Balance", data: points, stepped: true, borderColor: "#1f5fd6", backgroundColor: "rgba(31,95,214,.12)", fill: true, pointRadius: 3 }] },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        parsing: { xAxisKey: "x", yAxisKey: "y" },
        scales: {
          x: { type: "time", ticks: { maxTicksLimit: 6 }, time: { minUnit: "second", tooltipFormat: "d MMM yyyy HH:mm:ss", displayFormats: { second: "HH:mm:ss", minute: "HH:mm", hour: "d MMM HH:mm", day: "d MMM", month: "MMM yyyy" } } },
          y: { beginAtZero: true, ticks: { callback: (v) => money(v) } },
        },
        plugins: { legend: { display: false }, tooltip: { callbacks: { label: (c) => money(c.parsed.y) } } },
      },
    });
  }

  function renumber(container) {
    const rows = container.querySelectorAll(".recipient");
    rows.forEach((row, i) => {
      row.querySelectorAll("input").forEach((input) => {
        const label = row.querySelector('label[for="' + input.id + '"]');
        input.id = input.name + "-" + (i + 1);
        if (label) label.htmlFor = input.id;
      });
      let remove = row.querySelector(".remove");
      if (!remove) {
        remove = document.createElement("button");
        remove.type = "button";
        remove.className = "remove link";
        remove.textContent = "Remove";
        row.appendChild(remove);
      }
      remove.setAttribute("aria-label", "Remove recipient " + (i + 1));
      remove.hidden = rows.length === 1;
    });
    const add = document.getElementById("add-recipient");
    if (add) add.disabled = rows.length >= Number(container.dataset.max || 10);
  }

  // Without JavaScript "Add recipient" and "Remove" submit the form; with it they act in place.
  function setUpRecipients() {
    const container = document.getElementById("recipients");
    if (!container) return;
    document.getElementById("add-recipient").addEventListener("click", (event) => {
      event.preventDefault();
      const rows = container.querySelectorAll(".recipient");
      if (rows.length >= Number(container.dataset.max || 10)) return;
      const copy = rows[rows.length - 1].cloneNode(true);
      copy.querySelectorAll("input").forEach((input) => {
        input.value = "";
        input.removeAttribute("aria-invalid");
        input.removeAttribute("aria-describedby");
      });
      copy.querySelectorAll(".field-error").forEach((e) => e.remove());
      container.appendChild(copy);
      renumber(container);
      copy.querySelector("input").focus();
    });
    container.addEventListener("click", (event) => {
      const button = event.target.closest(".remove");
      if (!button) return;
      event.preventDefault();
      const rows = container.querySelectorAll(".recipient");
      if (rows.length > 1) {
        const row = button.closest(".recipient");
        const next = row.nextElementSibling || row.previousElementSibling;
        row.remove();
        if (next) next.querySelector("input").focus();
      }
      renumber(container);
    });
    renumber(container);
  }

  // A second click on a paying form does nothing; the idempotency key covers the rest.
  function setUpOnceForms() {
    document.querySelectorAll("form.once").forEach((form) => {
      form.addEventListener("submit", (event) => {
        if (form.dataset.sent) { event.preventDefault(); return; }
        form.dataset.sent = "1";
        form.querySelectorAll("button[type=submit]").forEach((b) => b.setAttribute("aria-disabled", "true"));
      });
    });
  }

  // htmx leaves the page as it is on an error answer (what was typed stays); say why
  // in the form's own message area and what to do.
  const KEPT = "tokpay-kept-fields";
  function explainRefusal(event) {
    const xhr = event.detail.xhr;
    const form = event.detail.elt.closest("form");
    if (!form || !xhr) return;
    const box = form.querySelector("[role=alert]") || form.appendChild(document.createElement("p"));
    box.setAttribute("role", "alert");
    box.className = "error";
    box.hidden = false;
    if (xhr.status === 401 || xhr.status === 403) {
      const kept = {};
      form.querySelectorAll("input[id]:not([type=hidden])").forEach((input) => { kept[input.id] = input.value; });
      sessionStorage.setItem(KEPT, JSON.stringify(kept));
      box.textContent = "";
      box.append("This page is out of date or your session ended, so nothing was done. ");
      const link = document.createElement("a");
      link.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      link.textContent = xhr.status === 401 ? "Log in again" : "Reload the page";
      if (xhr.status === 403) link.href = location.pathname + location.search;
      box.append(link, " and press the button again: what you typed is kept.");
    } else {
      box.textContent = "TokPay could not answer just now. Nothing was changed; please try again.";
    }
  }

  function restoreKeptFields() {
    const raw = sessionStorage.getItem(KEPT);
    if (!raw) return;
    sessionStorage.removeItem(KEPT);
    try {
      Object.entries(JSON.parse(raw)).forEach(([id, value]) => {
        const input = document.getElementById(id);
        if (input && !input.value) input.value = value;
      });
    } catch (e) { /* nothing to restore */ }
  }

  document.addEventListener("DOMContentLoaded", () => {
    syncTimeZone();
    restoreKeptFields();
    drawChart();
    setUpRecipients();
    setUpOnceForms();
  });
  document.body.addEventListener("ledger-changed", drawChart);
  document.body.addEventListener("htmx:responseError", explainRefusal);
  document.body.addEventListener("htmx:sendError", explainRefusal);
})();
