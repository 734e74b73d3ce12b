"""The report page: inline CSS and JavaScript around the sections (no external resources)."""

from __future__ import annotations

import datetime as _dt

from cai.report.html_eval import section_eval, section_header, section_judges
from cai.report.redteam import section_redteam
from cai.report.routes import section_routes
from cai.report.html_stages import (
    section_accounting,
    section_label,
    section_reward,
    section_traces,
    section_training,
)
from cai.report.svg import esc

CSS = """
:root{--fg:#1d1d1f;--mut:#666;--bd:#ddd;--bg2:#f6f7f9;--acc:#0072B2}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;color:var(--fg);margin:0;background:#fff}
main{max-width:1240px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:24px;margin:6px 0}h2{font-size:19px;margin:34px 0 10px;padding-bottom:4px;border-bottom:2px solid var(--acc)}
h3{font-size:15px;margin:18px 0 8px}h4{margin:10px 0 6px}h5{margin:8px 0 4px;font-size:13px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--bd);padding:6px 24px;z-index:5;font-size:13px}
nav a{margin-right:14px;color:var(--acc);text-decoration:none}
.meta{color:var(--mut)}code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--bg2);padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}th,td{border:1px solid var(--bd);padding:4px 7px;vertical-align:top;text-align:left}
th{background:var(--bg2);font-weight:600}.tw{max-width:100%;overflow-x:auto}table.nums td{min-width:92px}.ci,.v{white-space:nowrap}
.ci{color:var(--mut);font-size:12px}.n{color:#888;font-size:11px}.judge{color:#7a5b00;font-size:11px}
.na{color:#999}.small{font-size:12px;color:var(--mut)}.notrun{color:#888;font-style:italic;background:var(--bg2);padding:8px 10px;border-radius:4px}
.cols{display:flex;gap:28px;flex-wrap:wrap}.cols>div{flex:1 1 420px;min-width:0}
.charts{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}.charts svg{border:1px solid #eee;border-radius:4px}
.warnbox{border:2px solid #d55e00;background:#fff4ec;border-radius:6px;padding:6px 14px;margin:12px 0}
.warnbox h3,.warnbox h4{color:#b34700;margin:6px 0}.warn{color:#b34700}
.st{padding:1px 6px;border-radius:3px;font-size:12px}.st-complete{background:#e3f4ea;color:#0a6b35}.st-unfinished{background:#fff1d6;color:#8a5a00}.st-notrun{background:#eee;color:#777}
.tag{display:inline-block;font-size:11px;padding:0 5px;border-radius:3px;background:#eee;color:#444}.tag.ok{background:#e3f4ea;color:#0a6b35}.tag.bad{background:#fde8e8;color:#a11}
.flag{display:inline-block;font-size:11px;padding:0 5px;margin:1px 2px;border-radius:3px;background:#f3ecff;color:#5b2b9a}
.judgecard{border:1px solid var(--bd);border-radius:6px;padding:4px 12px;margin:8px 0}
.filterbar{margin:8px 0}#trace-filter{width:420px;max-width:100%;padding:5px 8px;border:1px solid #bbb;border-radius:4px}
table.traces{width:100%;table-layout:fixed}table.traces td.clip{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
table.traces th:nth-child(1){width:90px}table.traces th:nth-child(2){width:70px}table.traces th:nth-child(3){width:130px}
table.traces th:nth-child(6),table.traces th:nth-child(7){width:72px}table.traces th:nth-child(8){width:130px}
tr.detail>td{background:#fcfcfd;border-top:none;padding:2px 8px}tr.detail summary{cursor:pointer;color:var(--acc);font-size:12px}
.c{text-align:center}.txt{white-space:pre-wrap;word-break:break-word}
.pair{display:flex;gap:16px}.pair>div{flex:1}.round{border-left:3px solid #cfd8e3;padding:2px 10px;margin:8px 0}.round.final{border-color:var(--acc)}
.diff{background:#fff;border:1px solid #eee;padding:6px 8px;border-radius:4px;margin-top:4px}
del.diff-del+ins.diff-ins{margin-left:3px}del.diff-del{background:#ffd7d5;color:#8b1a10;text-decoration:line-through}ins.diff-ins{background:#d4f5dc;color:#0b5a22;text-decoration:none}
table.samples td .txt{max-height:9em;overflow:auto}ul.stats li{margin:2px 0}
"""

JS = """
(function(){
  var box=document.getElementById('trace-filter'), chk=document.getElementById('trace-changed');
  if(!box) return;
  var rows=[].slice.call(document.querySelectorAll('#traces tr.trace')), count=document.getElementById('trace-count');
  var details={};
  [].slice.call(document.querySelectorAll('#traces tr.detail')).forEach(function(d){details[d.getAttribute('data-k')]=d;});
  function apply(){
    var q=box.value.toLowerCase().trim(), only=chk.checked, shown=0;
    rows.forEach(function(r){
      var ok=(!q || r.getAttribute('data-search').indexOf(q)>=0) && (!only || r.getAttribute('data-changed')==='1');
      r.style.display=ok?'':'none'; var d=details[r.getAttribute('data-k')]; if(d) d.style.display=ok?'':'none';
      if(ok) shown++;
    });
    count.textContent=shown+' of '+rows.length+' traces shown';
  }
  box.addEventListener('input',apply); chk.addEventListener('change',apply);
  var m=/^#q=(.*)$/.exec(location.hash||''); if(m){ try{ box.value=decodeURIComponent(m[1]); }catch(e){} }
  apply();
})();
"""


def render_html(data: dict, generated: str | None = None) -> str:
    generated = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        ("eval", "Harmlessness vs helpfulness", section_eval(data)),
        ("routes", "RL-CAI routes compared", section_routes(data)),
        ("judges", "Judges and their measured accuracy", section_judges(data)),
        ("training", "Training curves", section_training(data)),
        ("reward", "Reward model evaluation", section_reward(data)),
        ("labels", "AI preference labels", section_label(data)),
        ("redteam", "Red-teaming", section_redteam(data)),
        ("accounting", "Time, tokens and money per stage", section_accounting(data)),
        ("traces", "Critique-revision traces (SL-CAI)", section_traces(data)),
    ]
    nav = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t, _ in sections)
    body = "".join(f'<section id="{k}"><h2>{esc(t)}</h2>\n{html}\n</section>' for k, t, html in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src data:\">"
        f"<title>CAI report — {esc(data['run'])}</title><style>{CSS}</style></head><body>"
        f"<nav>{nav}</nav><main>{section_header(data, generated)}{body}</main>"
        f"<script>{JS}</script></body></html>\n"
    )

