// The xlpref leaderboard site: builds index.html and the row pages from the JSON block in each page.
// Plain JavaScript, no library. Every text from the data goes through textContent (never innerHTML),
// so a model output holding <script> or HTML is shown as text and never runs.
"use strict";

(function () {
  var DATA = JSON.parse(document.getElementById("data").textContent);
  var LANGUAGE_NAMES = {target: "in-lang %", mixed: "mixed %", gated_wr: "gated WR"};

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function fixed(value, digits) { return value === null ? "—" : value.toFixed(digits); }

  // -- index: one table per judge group -----------------------------------------------------------

  function groupColumns(group) {
    var columns = [];
    // The average first: the headline number of each row is visible without scrolling.
    ["avg"].concat(group.langs).forEach(function (lang) {
      var order = group.ranked_by === "wr" ? ["wr", "lc"] : ["lc", "wr"];
      order.forEach(function (m) {
        columns.push({key: lang + "_" + m, lang: lang, head: lang + " " + m.toUpperCase(), digits: 2, se: true});
      });
    });
    if (group.language_columns) {
      group.langs.concat(["avg"]).forEach(function (lang) {
        Object.keys(LANGUAGE_NAMES).forEach(function (suffix) {
          columns.push({key: lang + "_" + suffix, lang: lang, head: lang + " " + LANGUAGE_NAMES[suffix], digits: 1,
                        language: true});
        });
      });
    }
    group.caps.forEach(function (cap) { columns.push({key: "cap_" + cap, lang: null, head: cap, digits: 2}); });
    return columns;
  }

  function best(group, key) {
    var values = group.rows.map(function (r) { return r.values[key] ? r.values[key][0] : null; })
      .filter(function (v) { return v !== null; });
    return values.length >= 2 ? Math.max.apply(null, values) : null;
  }

  function renderGroup(group, index) {
    var columns = groupColumns(group);
    var table = el("table", {className: "board", "data-group": String(index)});
    var head = el("tr");
    var fixedHeads = [{key: "rank", head: "#"}, {key: "label", head: "model"}, {key: "row_id", head: "row id"}];
    fixedHeads.concat(columns).forEach(function (column) {
      var th = el("th", {text: column.head, "data-key": column.key, title: "sort by " + column.head});
      if (column.lang) th.setAttribute("data-lang", column.lang);
      if (column.language) th.className = "language";
      th.addEventListener("click", function () { sortTable(table, group, column.key); });
      head.appendChild(th);
    });
    table.appendChild(el("thead", {}, [head]));
    var body = el("tbody");
    var bests = {};
    columns.forEach(function (column) { if (!column.language) bests[column.key] = best(group, column.key); });
    group.rows.forEach(function (row) {
      var tr = el("tr", {"data-row-id": row.row_id});
      tr.appendChild(el("td", {className: "rank", text: row.rank === null ? "" : String(row.rank)}));
      var label = row.page ? el("a", {href: row.page, text: row.label}) : el("span", {text: row.label});
      tr.appendChild(el("td", {className: "label"}, [label]));
      tr.appendChild(el("td", {className: "row-id", text: row.row_id}));
      columns.forEach(function (column) {
        var pair = row.values[column.key] || [null, null];
        var td = el("td", {className: "num" + (column.language ? " language" : ""), "data-key": column.key});
        if (column.lang) td.setAttribute("data-lang", column.lang);
        if (pair[0] !== null) td.setAttribute("data-value", String(pair[0]));
        td.appendChild(el("span", {className: "value", text: fixed(pair[0], column.digits)}));
        if (column.se && pair[1] !== null) td.appendChild(el("span", {className: "se", text: "±" + fixed(pair[1], 2)}));
        if (pair[0] !== null && bests[column.key] === pair[0]) {
          td.classList.add("best");
          td.querySelector(".value").textContent += "*";  // as in the terminal: * best in column
        }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    table.appendChild(body);
    var section = el("section", {className: "group" + (group.published ? " published" : "")}, [
      el("h2", {text: group.title}),
      el("div", {className: "scroll"}, [table]),
      el("ul", {className: "caption"}, group.caption.map(function (line) { return el("li", {text: line}); }))
    ]);
    return section;
  }

  function sortValue(row, key) {
    if (key === "label" || key === "row_id") return row[key].toLowerCase();
    if (key === "rank") return row.rank;
    return row.values[key] ? row.values[key][0] : null;
  }

  function sortTable(table, group, key) {
    var th = table.querySelector('th[data-key="' + key + '"]');
    var descending = th.getAttribute("aria-sort") !== "descending";
    if (key === "rank" || key === "label" || key === "row_id") descending = th.getAttribute("aria-sort") === "ascending";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var byId = {};
    group.rows.forEach(function (r) { byId[r.row_id] = r; });
    var body = table.tBodies[0];
    var trs = Array.prototype.slice.call(body.rows);
    trs.sort(function (a, b) {
      var x = sortValue(byId[a.getAttribute("data-row-id")], key);
      var y = sortValue(byId[b.getAttribute("data-row-id")], key);
      if (x === null && y === null) return 0;
      if (x === null) return 1;  // missing numbers last, either way
      if (y === null) return -1;
      var order = x < y ? -1 : x > y ? 1 : 0;
      return descending ? -order : order;
    });
    trs.forEach(function (tr) { body.appendChild(tr); });
  }

  function filterLanguage(lang) {
    document.querySelectorAll("[data-lang]").forEach(function (cell) {
      var show = lang === "" || cell.getAttribute("data-lang") === lang || cell.getAttribute("data-lang") === "avg";
      cell.hidden = !show;
    });
    document.querySelectorAll("section.group").forEach(function (section, i) {
      var group = DATA.groups[i];
      section.hidden = lang !== "" && group.langs.indexOf(lang) < 0;
    });
  }

  function renderIndex() {
    var app = document.getElementById("app");
    var langs = [];
    DATA.groups.forEach(function (g) { g.langs.forEach(function (l) { if (langs.indexOf(l) < 0) langs.push(l); }); });
    var select = el("select", {id: "lang-filter", "aria-label": "language"},
      [el("option", {value: "", text: "all languages"})].concat(langs.map(function (l) {
        return el("option", {value: l, text: l});
      })));
    select.addEventListener("change", function () { filterLanguage(select.value); });
    app.appendChild(el("header", {}, [
      el("h1", {text: "X-AlpacaEval leaderboard"}),
      el("p", {className: "note", text: "Regenerated from the stored results by `xlpref leaderboard --html`. " +
        "Rows are ranked only within their table (one judge, one reference). Click a column to sort, a model for " +
        "its outputs."}),
      el("label", {text: "language "}, [select])
    ]));
    var ours = DATA.groups.filter(function (g) { return !g.published; }).length;
    DATA.groups.forEach(function (group, i) {
      if (group.published && i === ours) app.appendChild(el("h2", {className: "part", text:
        "The paper's published numbers (not re-measured; each table keeps the paper's own languages)"}));
      app.appendChild(renderGroup(group, i));
    });
    if (DATA.plots.length) {
      app.appendChild(el("h2", {className: "part", text: "Runs by iteration"}));
      app.appendChild(el("div", {className: "plots"}, DATA.plots.map(function (src) {
        return el("figure", {}, [el("img", {src: src, alt: src, loading: "lazy"}), el("figcaption", {text: src})]);
      })));
    }
  }

  // -- row page: every instruction, both outputs, the judge's preference ------------------------------

  var PAGE_SIZE = 50;

  function outcome(item) {
    if (item.preference === null) return "unparsed";
    return item.preference > 1.5 ? "win" : item.preference < 1.5 ? "loss" : "tie";
  }

  function renderItem(item) {
    var result = outcome(item);
    var pref = item.preference === null ? "no preference parsed" :
      "P(model better) " + (item.preference - 1).toFixed(2) + " · " + result;
    return el("article", {className: "item " + result, "data-id": String(item.id), "data-lang": item.lang}, [
      el("h3", {}, [el("span", {className: "tag", text: item.lang}), el("span", {text: " #" + item.id + " "}),
                    el("span", {className: "instruction", text: item.instruction})]),
      el("p", {className: "meta", text: pref + " · shown first: " + item.first + " · lengths: model " +
        item.len_output + ", reference " + item.len_reference + " characters"}),
      el("div", {className: "pair"}, [
        el("div", {className: "output model"}, [el("h4", {text: "model output"}),
                                                el("pre", {className: "text", text: item.output})]),
        el("div", {className: "output reference"}, [el("h4", {text: "reference output"}),
                                                    el("pre", {className: "text", text: item.reference})])
      ])
    ]);
  }

  function renderRow() {
    var app = document.getElementById("app");
    var row = DATA.row;
    var items = DATA.items;
    var haystacks = null;  // lower-cased text, built on the first search only
    var state = {lang: "", outcome: "", min: null, max: null, query: "", page: 0, matches: items};
    app.appendChild(el("p", {}, [el("a", {href: "../index.html", text: "← leaderboard"})]));
    app.appendChild(el("h1", {text: row.label}));
    app.appendChild(el("p", {className: "note", text: "row " + row.row_id + " · model " + row.model +
      " · annotator " + row.annotator + " · reference " + row.reference}));
    var summary = el("table", {className: "board summary"});
    summary.appendChild(el("tr", {}, ["lang", "WR", "LC", "n"].map(function (h) { return el("th", {text: h}); })));
    DATA.langs.forEach(function (lang) {
      var m = DATA.metrics[lang];
      summary.appendChild(el("tr", {}, [el("td", {text: lang}),
        el("td", {className: "num", text: fixed(m.win_rate, 2) + (m.standard_error === null ? "" : " ±" + fixed(m.standard_error, 2))}),
        el("td", {className: "num", text: fixed(m.length_controlled_winrate, 2)}),
        el("td", {className: "num", text: m.n_total === null ? "—" : String(m.n_total)})]));
    });
    app.appendChild(summary);

    var langSelect = el("select", {id: "lang-filter", "aria-label": "language"},
      [el("option", {value: "", text: "all languages"})].concat(DATA.langs.map(function (l) {
        return el("option", {value: l, text: l});
      })));
    var outcomeSelect = el("select", {id: "outcome-filter", "aria-label": "judge's verdict"},
      [["", "wins and losses"], ["win", "wins"], ["loss", "losses"], ["tie", "ties"], ["unparsed", "unparsed"]]
        .map(function (o) { return el("option", {value: o[0], text: o[1]}); }));
    var minLength = el("input", {id: "min-length", type: "number", min: "0", placeholder: "min", "aria-label": "shortest model output"});
    var maxLength = el("input", {id: "max-length", type: "number", min: "0", placeholder: "max", "aria-label": "longest model output"});
    var search = el("input", {id: "search", type: "search", placeholder: "search instructions and outputs",
                              "aria-label": "search"});
    var count = el("p", {id: "count", className: "note"});
    var list = el("div", {id: "items"});
    var more = el("button", {id: "more", type: "button", text: "show more"});
    app.appendChild(el("div", {className: "filters"}, [
      el("label", {text: "language "}, [langSelect]), el("label", {text: "verdict "}, [outcomeSelect]),
      el("label", {text: "model output length "}, [minLength, el("span", {text: " to "}), maxLength]),
      el("label", {className: "grow"}, [search])
    ]));
    app.appendChild(count);
    app.appendChild(list);
    app.appendChild(more);

    function number(input) { return input.value === "" ? null : Number(input.value); }

    function apply() {
      state.lang = langSelect.value;
      state.outcome = outcomeSelect.value;
      state.min = number(minLength);
      state.max = number(maxLength);
      state.query = search.value.trim().toLowerCase();
      if (state.query && haystacks === null) {
        haystacks = items.map(function (i) { return (i.instruction + "\n" + i.output + "\n" + i.reference).toLowerCase(); });
      }
      state.matches = items.filter(function (item, index) {
        return (!state.lang || item.lang === state.lang) && (!state.outcome || outcome(item) === state.outcome) &&
          (state.min === null || item.len_output >= state.min) && (state.max === null || item.len_output <= state.max) &&
          (!state.query || haystacks[index].indexOf(state.query) >= 0);
      });
      state.page = 0;
      list.textContent = "";
      show();
    }

    function show() {
      var start = state.page * PAGE_SIZE;
      var fragment = document.createDocumentFragment();
      state.matches.slice(start, start + PAGE_SIZE).forEach(function (item) { fragment.appendChild(renderItem(item)); });
      list.appendChild(fragment);
      state.page += 1;
      var shown = Math.min(state.page * PAGE_SIZE, state.matches.length);
      count.textContent = state.matches.length + " of " + items.length + " outputs match · showing " + shown;
      more.hidden = shown >= state.matches.length;
    }

    [langSelect, outcomeSelect].forEach(function (s) { s.addEventListener("change", apply); });
    [minLength, maxLength, search].forEach(function (s) { s.addEventListener("input", apply); });
    more.addEventListener("click", show);
    apply();
  }

  if (document.body.getAttribute("data-page") === "row") renderRow(); else renderIndex();
  // Milliseconds from navigation start to a built page: the browser test reads it.
  document.body.setAttribute("data-ready-ms", String(Math.round(performance.now())));
  document.body.setAttribute("data-ready", "true");
})();
