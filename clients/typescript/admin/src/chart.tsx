// A small time-series chart over uPlot (the charting library: canvas, ~50 KB, made for live
// series), redrawn with new data without rebuilding the plot.
import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface Series {
  label: string;
  stroke: string;
}

export function TimeChart({ title, series, data }: { title: string; series: Series[]; data: uPlot.AlignedData }) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    const el = host.current;
    if (!el) return;
    const opts: uPlot.Options = {
      title,
      width: Math.max(280, el.clientWidth),
      height: 160,
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, points: { show: false } }))],
      axes: [{ space: 60 }, { size: 48 }],
      scales: { x: { time: true }, y: { range: (_u, min, max) => [0, Math.max(1, max * 1.15, min)] } },
      legend: { live: false },
    };
    plot.current = new uPlot(opts, data, el);
    const resize = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(280, el.clientWidth), height: 160 }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
    // The plot is built once per title/series; data changes go through setData below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [title, series.map((s) => s.label).join()]);

  useEffect(() => {
    plot.current?.setData(data);
  }, [data]);

  return <div className="chart" ref={host} />;
}
