// TokPay web behaviour: the balance chart, payment rows, one-shot forms.
(function () {
  "use strict";

  let chart = null;

  function money(cents) {
    const sign = cents < 0 ? "-" : "";
    const abs = Math.abs(cents);
    const whole = Math.floor(abs / 100).toLocaleString("en-US");
    return sign + "$" + whole + "." + String(abs % 100).padStart(2, "0");
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
          x: { type: "time", ticks: { maxTicksLimit: 6 }, time: { minUnit: "second", tooltipFormat: "yyyy-MM-dd HH:mm:ss" } },
          y: { beginAtZero: true, ticks: { callback: (v) => money(v) } },
        },
        plugins: { legend: { display: false }, tooltip: { callbacks: { label: (c) => money(c.parsed.y) } } },
      },
    });
  }

  function renumber(container) {
    container.querySelectorAll(".recipient").forEach((row, i) => {
      row.querySelectorAll("input").forEach((input) => {
        const base = input.name;
        input.id = base + "-" + (i + 1);
        const label = row.querySelector('label[for^="' + base + '-"]');
        if (label) label.htmlFor = input.id;
      });
    });
    const rows = container.querySelectorAll(".recipient");
    rows.forEach((row) => {
      row.querySelector(".remove").hidden = rows.length === 1;
    });
    const add = document.getElementById("add-recipient");
    if (add) add.disabled = rows.length >= Number(container.dataset.max || 10);
  }

  function setUpRecipients() {
    const container = document.getElementById("recipients");
    if (!container) return;
    document.getElementById("add-recipient").addEventListener("click", () => {
      const rows = container.querySelectorAll(".recipient");
      const copy = rows[rows.length - 1].cloneNode(true);
      copy.querySelectorAll("input").forEach((input) => {
        input.value = "";
        input.removeAttribute("aria-invalid");
        input.removeAttribute("aria-describedby");
      });
      copy.querySelectorAll(".row-error").forEach((e) => e.remove());
      container.appendChild(copy);
      renumber(container);
      copy.querySelector("input").focus();
    });
    container.addEventListener("click", (event) => {
      const button = event.target.closest(".remove");
      if (!button) return;
      if (container.querySelectorAll(".recipient").length > 1) button.closest(".recipient").remove();
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

  document.addEventListener("DOMContentLoaded", () => {
    drawChart();
    setUpRecipients();
    setUpOnceForms();
  });
  document.body.addEventListener("ledger-changed", drawChart);
})();
