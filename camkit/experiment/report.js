(function () {
  const holder = document.getElementById("data");
  if (!holder) return; // output.report_images = 0: no image browser
  const D = JSON.parse(holder.textContent);
  const grid = document.getElementById("grid");
  const sortSel = document.getElementById("sort");
  const rangeSel = document.getElementById("range-metric");
  const orderBtn = document.getElementById("order");
  const filterSel = document.getElementById("filter");
  const low = document.getElementById("range-low");
  const high = document.getElementById("range-high");
  const status = document.getElementById("status");
  const zoom = document.getElementById("zoom");
  const pad = (i) => String(i).padStart(6, "0") + ".png";
  let worstFirst = false, limit = 0;
  function option(sel, value, text) {
    const o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o);
  }
  option(sortSel, "", "image order");
  option(rangeSel, "", "(no metric range)");
  D.methods.forEach((m, mi) => D.metrics.forEach((n, ni) => {
    option(sortSel, mi + ":" + ni, m + " · " + D.labels[ni]);
    option(rangeSel, mi + ":" + ni, m + " · " + D.labels[ni]);
  }));
  function key(sel) {
    if (!sel.value) return null;
    const [mi, ni] = sel.value.split(":").map(Number);
    return {m: D.methods[mi], n: ni};
  }
  function value(img, k) { return img.v[k.m][k.n]; }
  function head() {
    const tr = document.createElement("tr");
    ["image"].concat(D.methods).forEach((t) => {
      const th = document.createElement("th"); th.scope = "col"; th.textContent = t; tr.appendChild(th);
    });
    grid.tHead.replaceChildren(tr);
  }
  function thumb(src, alt, img, method) {
    const b = document.createElement("button");
    b.type = "button"; b.className = "cell";
    b.setAttribute("aria-label", "enlarge " + alt);
    const el = document.createElement("img");
    el.loading = "lazy"; el.decoding = "async"; el.src = src; el.alt = alt; el.width = 72; el.height = 72;
    b.appendChild(el);
    b.addEventListener("click", () => open(img, method));
    return b;
  }
  function rows() {
    const s = key(sortSel), r = key(rangeSel);
    const lo = low.value === "" ? -Infinity : Number(low.value);
    const hi = high.value === "" ? Infinity : Number(high.value);
    let list = D.images.filter((img) => {
      if (filterSel.value === "correct" && img.correct !== true) return false;
      if (filterSel.value === "incorrect" && img.correct !== false) return false;
      if (r) { const v = value(img, r); if (v === null || v < lo || v > hi) return false; }
      return true;
    });
    if (s) {
      const lowerBetter = D.lower[s.n];
      const sign = worstFirst === lowerBetter ? -1 : 1;
      list = list.slice().sort((a, b) => {
        const va = value(a, s), vb = value(b, s);
        if (va === null) return 1; if (vb === null) return -1;
        return sign * (va - vb) || a.i - b.i;
      });
    }
    const total = list.length;
    if (limit) list = list.slice(0, limit);
    const body = document.createDocumentFragment();
    for (const img of list) {
      const tr = document.createElement("tr");
      const th = document.createElement("td"); th.className = "image";
      th.appendChild(thumb(D.assets + "/_input/" + pad(img.i), "image " + img.id, img, null));
      const cap = document.createElement("div");
      let text = img.id;
      if (img.label !== null) text += " · label " + img.label;
      cap.textContent = text + " · predicted " + img.predicted + (img.target !== img.predicted ? " · target " + img.target : "");
      if (img.correct !== null) {
        const mark = document.createElement("span");
        mark.className = img.correct ? "right" : "wrong";
        mark.textContent = img.correct ? " ✓ correct" : " ✗ wrong";
        cap.appendChild(mark);
      }
      th.appendChild(cap); tr.appendChild(th);
      for (const m of D.methods) {
        const td = document.createElement("td");
        td.appendChild(thumb(D.overlays + "/" + m + "/" + pad(img.i), m + " on " + img.id, img, m));
        if (s) {
          const v = img.v[m][s.n], span = document.createElement("div");
          span.className = "value"; span.textContent = v === null ? "–" : v.toFixed(3);
          td.appendChild(span);
        }
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    grid.tBodies[0].replaceChildren(body);
    status.textContent = "Showing " + list.length + " of " + D.images.length + " images" +
      (total !== list.length ? " (" + total + " match)" : "") +
      (s ? ", sorted by " + s.m + " · " + D.labels[s.n] + (worstFirst ? ", worst first" : ", best first") : "") + ".";
    orderBtn.textContent = worstFirst ? "best first" : "worst first";
  }
  function open(img, method) {
    const methods = method ? [method] : D.methods;
    document.getElementById("zoom-title").textContent = img.id + (method ? " · " + method : "") +
      " · predicted " + img.predicted + (img.label !== null ? " · label " + img.label : "");
    const body = document.getElementById("zoom-body");
    body.replaceChildren();
    function fig(src, text) {
      const f = document.createElement("figure"), el = document.createElement("img"), c = document.createElement("figcaption");
      el.src = src; el.alt = text; c.textContent = text; f.append(c, el); body.appendChild(f);
    }
    fig(D.assets + "/_input/" + pad(img.i), "image");
    for (const m of methods) {
      fig(D.assets + "/" + m + "/map-" + pad(img.i), m + ": map");
      fig(D.overlays + "/" + m + "/" + pad(img.i), m + ": overlay");
    }
    const t = document.createElement("table");
    const hr = t.insertRow(); hr.insertCell().textContent = "metric";
    methods.forEach((m) => { hr.insertCell().textContent = m; });
    D.metrics.forEach((n, ni) => {
      const r = t.insertRow(); r.insertCell().textContent = D.labels[ni] + (D.lower[ni] ? " ↓" : " ↑");
      methods.forEach((m) => { const v = img.v[m][ni]; r.insertCell().textContent = v === null ? "–" : v.toFixed(3); });
    });
    body.appendChild(t);
    zoom.showModal();
  }
  document.getElementById("zoom-close").addEventListener("click", () => zoom.close());
  zoom.addEventListener("click", (e) => { if (e.target === zoom) zoom.close(); });
  orderBtn.addEventListener("click", () => { worstFirst = !worstFirst; rows(); });
  document.getElementById("worst").addEventListener("click", () => {
    if (!sortSel.value) sortSel.selectedIndex = 1;
    worstFirst = true; limit = 20; rows();
  });
  document.getElementById("reset").addEventListener("click", () => {
    limit = 0; filterSel.value = "all"; rangeSel.value = ""; low.value = ""; high.value = ""; rows();
  });
  [sortSel, filterSel, rangeSel, low, high].forEach((el) => el.addEventListener("change", rows));
  head(); rows();
})();
