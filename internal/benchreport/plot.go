package main

import (
	"fmt"
	"math"
	"strings"
)

// series is one line of the plot.
type series struct {
	name, color string
	dash        bool
	ys          []float64 // ms, one per x of its panel (0: none)
}

// panel is one half of the plot: a kind of target, its x labels.
type panel struct {
	title  string
	xs     []string
	series []series
}

// plot draws the pause (and its floor) against threads (C) and goroutines
// (Go), on a log scale, as an SVG.
func plot(rows []pauseRow) string {
	c := panel{title: "C: threads"}
	g := panel{title: "Go (GOMAXPROCS 8): parked goroutines"}
	pick := func(lang, mode string) []pauseRow {
		var out []pauseRow
		for _, r := range rows {
			if r.lang == lang && r.mode == mode {
				out = append(out, r)
			}
		}
		return out
	}
	sleep := pick("c", "sleep")
	busy := pick("c", "busy")
	for _, r := range sleep {
		c.xs = append(c.xs, fmt.Sprint(r.n))
	}
	line := func(rs []pauseRow, xs []string, unit string) []float64 {
		ys := make([]float64, len(xs))
		for _, r := range rs {
			for i, x := range xs {
				if x == fmt.Sprint(r.n) || x == thousands(r.n) {
					ys[i] = r.ms(unit)
				}
			}
		}
		return ys
	}
	c.series = []series{
		{"apply, sleeping", "#d62728", false, line(sleep, c.xs, "apply-pause-median-us")},
		{"floor, sleeping", "#d62728", true, line(sleep, c.xs, "floor-median-us")},
		{"apply, busy", "#1f77b4", false, line(busy, c.xs, "apply-pause-median-us")},
		{"floor, busy", "#1f77b4", true, line(busy, c.xs, "floor-median-us")},
		{"held stop, sleeping", "#9467bd", true, line(sleep, c.xs, "held-stop-resume-median-us")},
	}
	gos := pick("go", "")
	for _, r := range gos {
		g.xs = append(g.xs, thousands(r.n))
	}
	g.series = []series{
		{"apply", "#d62728", false, line(gos, g.xs, "apply-pause-median-us")},
		{"walk all in the stop", "#ff7f0e", false, line(gos, g.xs, "take-full-median-us")},
		{"incremental walk", "#2ca02c", false, line(gos, g.xs, "take-incremental-median-us")},
		{"floor", "#7f7f7f", true, line(gos, g.xs, "floor-median-us")},
		{"held stop", "#9467bd", true, line(gos, g.xs, "held-stop-resume-median-us")},
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, p := range []panel{c, g} {
		for _, s := range p.series {
			for _, y := range s.ys {
				if y > 0 {
					lo, hi = min(lo, y), max(hi, y)
				}
			}
		}
	}
	if math.IsInf(lo, 1) {
		lo, hi = 0.01, 1
	}
	lo, hi = math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
	var b strings.Builder
	const W, H = 960, 440
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	fmt.Fprintf(&b, `<text x="%d" y="20" text-anchor="middle" font-size="14">Pause (ms, median, log scale) against threads and goroutines</text>`+"\n", W/2)
	drawPanel(&b, c, 60, 40, 400, 280, lo, hi)
	drawPanel(&b, g, 540, 40, 400, 280, lo, hi)
	b.WriteString("</svg>\n")
	return b.String()
}

func drawPanel(b *strings.Builder, p panel, x0, y0, w, h int, lo, hi float64) {
	yOf := func(v float64) float64 {
		return float64(y0+h) - (math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*float64(h)
	}
	xOf := func(i int) float64 {
		if len(p.xs) < 2 {
			return float64(x0 + w/2)
		}
		return float64(x0) + 20 + float64(i)*float64(w-40)/float64(len(p.xs)-1)
	}
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="black"/>`+"\n", x0, y0, w, h)
	for d := lo; d <= hi*1.0001; d *= 10 {
		y := yOf(d)
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`, x0, y, x0+w, y)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%g</text>`+"\n", x0-4, y+4, d)
	}
	for i, x := range p.xs {
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", xOf(i), y0+h+16, x)
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", x0+w/2, y0+h+34, p.title)
	for k, s := range p.series {
		var pts []string
		for i, y := range s.ys {
			if y > 0 {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(i), yOf(y)))
				fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`, xOf(i), yOf(y), s.color)
			}
		}
		dash := ""
		if s.dash {
			dash = ` stroke-dasharray="5,4"`
		}
		if len(pts) > 1 {
			fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", strings.Join(pts, " "), s.color, dash)
		}
		ly := y0 + h + 50 + 14*(k%3)
		lx := x0 + (k/3)*200
		fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`, lx, ly-4, lx+24, ly-4, s.color, dash)
		fmt.Fprintf(b, `<text x="%d" y="%d">%s</text>`+"\n", lx+30, ly, s.name)
	}
}
