// report.html's script, inlined into the page by perturbcast.report.page: draws the figures embedded as
// JSON in #report-data and redraws the per dataset x task views when the picker changes.
(function () {
  var DATA = JSON.parse(document.getElementById('report-data').textContent);
  var CONFIG = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ['lasso2d', 'select2d']};
  function draw(id, fig) {
    var el = document.getElementById(id);
    if (el && fig) { Plotly.react(el, fig.data, fig.layout, CONFIG); }
  }
  Object.keys(DATA.figures).forEach(function (id) { draw(id, DATA.figures[id]); });
  var select = document.getElementById('slice-select');
  function show(key) {
    Object.keys(DATA.slices).forEach(function (id) { draw(id, DATA.slices[id][key]); });
    var table = document.getElementById('slice-table');
    if (table) { table.innerHTML = DATA.slice_tables[key] || ''; }
  }
  if (select) {
    select.addEventListener('change', function () { show(select.value); });
    show(select.value);
  }
  document.body.setAttribute('data-rendered', 'true');
})();
