// Time-series charts with uPlot: dense, fast, and redrawn in place as live
// readings arrive.

import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface ChartLine {
  label: string;
  color: string;
}

/** A horizontal band of the y axis, e.g. "good signal" between −90 and −80 dBm. */
export interface QualityBand {
  from: number;
  to: number;
  color: string;
  label: string;
}

/** x in Unix seconds, then one array per line; null where a line has no point. */
export type ChartData = [number[], ...(number | null)[][]];

export function TimeChart({
  title,
  unit,
  lines,
  data,
  bands,
  height = 200,
  xRange,
  yRange,
  testId,
}: {
  /** The time span to show, in Unix ms, whatever the data covers. */
  xRange?: [number, number];
  /** The y span always shown (the data may widen it), e.g. so quality bands stay in view. */
  yRange?: [number, number];
  title: string;
  unit?: string;
  lines: ChartLine[];
  data: ChartData;
  bands?: QualityBand[];
  height?: number;
  testId?: string;
}) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const rangeRef = useRef(xRange);
  rangeRef.current = xRange;

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const drawBands = (u: uPlot) => {
      if (!bands) return;
      const { ctx } = u;
      const { left, top, width, height: h } = u.bbox;
      ctx.save();
      for (const b of bands) {
        const y1 = u.valToPos(b.to, "y", true);
        const y2 = u.valToPos(b.from, "y", true);
        const yTop = Math.max(top, Math.min(y1, y2));
        const yBottom = Math.min(top + h, Math.max(y1, y2));
        if (yBottom <= yTop) continue;
        ctx.fillStyle = b.color;
        ctx.fillRect(left, yTop, width, yBottom - yTop);
      }
      ctx.restore();
    };
    const options: uPlot.Options = {
      width: el.clientWidth || 600,
      height,
      series: [
        {},
        ...lines.map((l) => ({
          label: l.label,
          stroke: l.color,
          width: 1.5,
          spanGaps: false,
          value: (_u: uPlot, v: number | null) => (v == null ? "—" : `${round(v)}${unit ? ` ${unit}` : ""}`),
        })),
      ],
      axes: [{}, { size: 60, values: (_u, vals) => vals.map((v) => `${round(v)}`) }],
      scales: {
        ...(yRange && {
          y: {
            range: (_u: uPlot, min: number | null, max: number | null): uPlot.Range.MinMax => [
              Math.min(min ?? yRange[0], yRange[0]),
              Math.max(max ?? yRange[1], yRange[1]),
            ],
          },
        }),
        x: { time: true, range: (_u, min, max) => (rangeRef.current ? [rangeRef.current[0] / 1000, rangeRef.current[1] / 1000] : [min, max]) },
      },
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      hooks: { drawClear: [drawBands] },
    };
    const u = new uPlot(options, data as uPlot.AlignedData, el);
    plot.current = u;
    const resize = new ResizeObserver(() => u.setSize({ width: el.clientWidth, height }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
    // The chart is rebuilt when its shape changes; new data goes through setData below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [lines.map((l) => l.label).join("|"), height, bands]);

  useEffect(() => {
    plot.current?.setData(data as uPlot.AlignedData);
  }, [data]);

  const points = data[0].length;
  return (
    <figure class="chart" data-testid={testId} data-points={points}>
      <figcaption>
        {title}
        {unit && <span class="unit"> ({unit})</span>}
        {bands && (
          <span class="bands">
            {bands.map((b) => (
              <span class="band-key" style={{ background: b.color }}>
                {b.label}
              </span>
            ))}
          </span>
        )}
      </figcaption>
      <div ref={box} />
      {points === 0 && <div class="chart-empty">No readings in this range.</div>}
    </figure>
  );
}

function round(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/**
 * Lines from several series sampled on the same steps: one x per step that
 * any of them has, null where one is missing.
 */
export function alignSeries(series: { ts: number; value: number }[][]): ChartData {
  const xs = new Set<number>();
  for (const s of series) for (const p of s) xs.add(p.ts);
  const x = [...xs].sort((a, b) => a - b);
  const index = new Map(x.map((t, i) => [t, i]));
  const ys = series.map((s) => {
    const y: (number | null)[] = new Array(x.length).fill(null);
    for (const p of s) y[index.get(p.ts)!] = p.value;
    return y;
  });
  return [x.map((t) => t / 1000), ...ys];
}

// Signal quality bands as operators read them (3GPP measurement ranges,
// the usual field thresholds).
const EXCELLENT = "rgba(46, 160, 67, 0.10)";
const GOOD = "rgba(46, 160, 67, 0.05)";
const FAIR = "rgba(210, 153, 34, 0.10)";
const POOR = "rgba(218, 54, 51, 0.10)";

export const RSRP_BANDS: QualityBand[] = [
  { from: -80, to: -30, color: EXCELLENT, label: "excellent ≥ −80" },
  { from: -90, to: -80, color: GOOD, label: "good" },
  { from: -100, to: -90, color: FAIR, label: "fair" },
  { from: -150, to: -100, color: POOR, label: "poor < −100" },
];
export const RSRQ_BANDS: QualityBand[] = [
  { from: -10, to: 0, color: EXCELLENT, label: "excellent ≥ −10" },
  { from: -15, to: -10, color: GOOD, label: "good" },
  { from: -20, to: -15, color: FAIR, label: "fair" },
  { from: -40, to: -20, color: POOR, label: "poor < −20" },
];
export const SINR_BANDS: QualityBand[] = [
  { from: 20, to: 50, color: EXCELLENT, label: "excellent ≥ 20" },
  { from: 13, to: 20, color: GOOD, label: "good" },
  { from: 0, to: 13, color: FAIR, label: "fair" },
  { from: -30, to: 0, color: POOR, label: "poor < 0" },
];
