//! Rate-against-distance plots with a logarithmic y axis, as SVG or PNG, with no dependencies
//! (an embedded 5×7 bitmap font and a small deflate encoder for PNG), so the CLI builds fast
//! and needs no system fonts.

use std::fmt::Write as _;

/// One curve.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// (x, y) points; y ≤ 0 or non-finite breaks the line (log axis).
    pub points: Vec<(f64, f64)>,
    /// Dashed line (used for bounds).
    pub dashed: bool,
}

/// A plot with a linear x axis and a log10 y axis.
pub struct Plot {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Curves.
    pub series: Vec<Series>,
}

const W: i32 = 960;
const H: i32 = 640;
const LEFT: i32 = 110;
const RIGHT: i32 = 30;
const TOP: i32 = 50;
const BOTTOM: i32 = 80;
const COLOURS: [(u8, u8, u8); 8] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
];
const GREY: (u8, u8, u8) = (90, 90, 90);

struct Frame {
    x0: f64,
    x1: f64,
    /// log10 range of y.
    d0: i32,
    d1: i32,
}

impl Frame {
    fn new(plot: &Plot) -> Self {
        let mut x0 = f64::INFINITY;
        let mut x1 = f64::NEG_INFINITY;
        let mut y0 = f64::INFINITY;
        let mut y1 = f64::NEG_INFINITY;
        for s in &plot.series {
            for &(x, y) in &s.points {
                if x.is_finite() {
                    x0 = x0.min(x);
                    x1 = x1.max(x);
                }
                if y > 0.0 && y.is_finite() && !s.dashed {
                    y0 = y0.min(y);
                    y1 = y1.max(y);
                }
            }
        }
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if !y0.is_finite() {
            // Only bounds (or nothing) to show: use them.
            for s in &plot.series {
                for &(_, y) in &s.points {
                    if y > 0.0 && y.is_finite() {
                        y0 = y0.min(y);
                        y1 = y1.max(y);
                    }
                }
            }
        }
        if !y0.is_finite() {
            (y0, y1) = (1e-6, 1.0);
        }
        let mut d0 = y0.log10().floor() as i32;
        // Bounds may rise above the curves: leave one decade of headroom.
        let mut d1 = y1.log10().ceil() as i32 + 1;
        if d1 <= d0 {
            d1 = d0 + 1;
        }
        if d1 - d0 > 24 {
            d0 = d1 - 24;
        }
        Frame { x0, x1, d0, d1 }
    }

    fn px(&self, x: f64) -> f64 {
        LEFT as f64 + (x - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT) as f64
    }

    fn py(&self, y: f64) -> f64 {
        let t = (y.log10() - self.d0 as f64) / (self.d1 - self.d0) as f64;
        (H - BOTTOM) as f64 - t * (H - TOP - BOTTOM) as f64
    }

    /// Line segments (pixel coordinates) of a series, clipped to the frame vertically.
    fn segments(&self, s: &Series) -> Vec<Vec<(f64, f64)>> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        let lo = 10f64.powi(self.d0);
        let hi = 10f64.powi(self.d1);
        for &(x, y) in &s.points {
            if y > 0.0 && y.is_finite() && x.is_finite() {
                let yc = y.clamp(lo, hi);
                if y > hi || y < lo {
                    // Beyond the frame (e.g. PLOB near 0 km or far below the curves): break.
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                    continue;
                }
                cur.push((self.px(x), self.py(yc)));
            } else if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    fn x_ticks(&self) -> Vec<f64> {
        let span = self.x1 - self.x0;
        let raw = span / 8.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(mag * 10.0);
        let mut t = (self.x0 / step).ceil() * step;
        let mut v = Vec::new();
        while t <= self.x1 + 1e-9 * span {
            v.push(t);
            t += step;
        }
        v
    }

    fn y_step(&self) -> i32 {
        ((self.d1 - self.d0) + 11) / 12
    }
}

fn fmt_x(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Plot {
    /// Left edge of the legend: far enough from the right edge for the longest label.
    fn legend_x(&self) -> i32 {
        let longest = self
            .series
            .iter()
            .map(|s| s.label.chars().count())
            .max()
            .unwrap_or(0) as i32;
        W - RIGHT - 50 - 12 * longest
    }

    /// The plot as an SVG document.
    pub fn to_svg(&self) -> String {
        let f = Frame::new(self);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let (pl, pr, pt, pb) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
        // Grid and ticks.
        for d in (f.d0..=f.d1).step_by(f.y_step() as usize) {
            let y = f.py(10f64.powi(d));
            let _ = writeln!(
                s,
                r##"<line x1="{pl}" y1="{y:.1}" x2="{pr}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" font-size="14" text-anchor="end">10<tspan dy="-6" font-size="10">{d}</tspan></text>"##,
                pl - 8,
                y + 5.0
            );
        }
        for x in f.x_ticks() {
            let px = f.px(x);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{pt}" x2="{px:.1}" y2="{pb}" stroke="#f0f0f0"/><text x="{px:.1}" y="{}" font-size="14" text-anchor="middle">{}</text>"##,
                pb + 20,
                fmt_x(x)
            );
        }
        let _ = writeln!(
            s,
            r#"<rect x="{pl}" y="{pt}" width="{}" height="{}" fill="none" stroke="black"/>"#,
            pr - pl,
            pb - pt
        );
        // Curves.
        for (i, ser) in self.series.iter().enumerate() {
            let (r, g, b) = if ser.dashed {
                GREY
            } else {
                COLOURS[i % COLOURS.len()]
            };
            let dash = if ser.dashed {
                r#" stroke-dasharray="8 5""#
            } else {
                ""
            };
            for seg in f.segments(ser) {
                let pts: Vec<String> = seg.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="rgb({r},{g},{b})" stroke-width="2"{dash}/>"#,
                    pts.join(" ")
                );
            }
            // Legend.
            let ly = pt + 20 + 20 * i as i32;
            let lx = self.legend_x();
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="rgb({r},{g},{b})" stroke-width="2"{dash}/><text x="{}" y="{}" font-size="14">{}</text>"#,
                lx + 30,
                lx + 38,
                ly + 5,
                esc(&ser.label)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="30" font-size="18" text-anchor="middle">{}</text>"#,
            W / 2,
            esc(&self.title)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="15" text-anchor="middle">{}</text>"#,
            (pl + pr) / 2,
            H - 30,
            esc(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="25" y="{}" font-size="15" text-anchor="middle" transform="rotate(-90 25 {})">{}</text>"#,
            (pt + pb) / 2,
            (pt + pb) / 2,
            esc(&self.y_label)
        );
        s.push_str("</svg>\n");
        s
    }

    /// The plot as a PNG image (8-bit RGB).
    pub fn to_png(&self) -> Vec<u8> {
        let f = Frame::new(self);
        let mut c = Canvas::new(W as usize, H as usize);
        let (pl, pr, pt, pb) = (
            LEFT as f64,
            (W - RIGHT) as f64,
            TOP as f64,
            (H - BOTTOM) as f64,
        );
        for d in (f.d0..=f.d1).step_by(f.y_step() as usize) {
            let y = f.py(10f64.powi(d));
            c.line(pl, y, pr, y, (224, 224, 224), 1, false);
            let label = format!("1e{d}");
            c.text_right(pl as i32 - 8, y as i32 - 7, &label, 2, (0, 0, 0));
        }
        for x in f.x_ticks() {
            let px = f.px(x);
            c.line(px, pt, px, pb, (240, 240, 240), 1, false);
            let label = fmt_x(x);
            let w = text_width(&label, 2);
            c.text(px as i32 - w / 2, pb as i32 + 10, &label, 2, (0, 0, 0));
        }
        c.line(pl, pt, pr, pt, (0, 0, 0), 1, false);
        c.line(pl, pb, pr, pb, (0, 0, 0), 1, false);
        c.line(pl, pt, pl, pb, (0, 0, 0), 1, false);
        c.line(pr, pt, pr, pb, (0, 0, 0), 1, false);
        for (i, ser) in self.series.iter().enumerate() {
            let col = if ser.dashed {
                GREY
            } else {
                COLOURS[i % COLOURS.len()]
            };
            for seg in f.segments(ser) {
                for w in seg.windows(2) {
                    c.line(w[0].0, w[0].1, w[1].0, w[1].1, col, 2, ser.dashed);
                }
                if seg.len() == 1 {
                    c.line(seg[0].0, seg[0].1, seg[0].0 + 1.0, seg[0].1, col, 3, false);
                }
            }
            let ly = (pt as i32 + 20 + 20 * i as i32) as f64;
            let lx = self.legend_x() as f64;
            c.line(lx, ly, lx + 30.0, ly, col, 2, ser.dashed);
            c.text(lx as i32 + 38, ly as i32 - 7, &ser.label, 2, (0, 0, 0));
        }
        let tw = text_width(&self.title, 2);
        c.text(W / 2 - tw / 2, 15, &self.title, 2, (0, 0, 0));
        let xw = text_width(&self.x_label, 2);
        c.text(
            (LEFT + W - RIGHT) / 2 - xw / 2,
            H - 40,
            &self.x_label,
            2,
            (0, 0, 0),
        );
        c.text_vertical(12, (TOP + H - BOTTOM) / 2, &self.y_label, 2, (0, 0, 0));
        encode_png(W as u32, H as u32, &c.px)
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn put(&mut self, x: i32, y: i32, c: (u8, u8, u8)) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i] = c.0;
            self.px[i + 1] = c.1;
            self.px[i + 2] = c.2;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn line(
        &mut self,
        x0: f64,
        y0: f64,
        x1: f64,
        y1: f64,
        c: (u8, u8, u8),
        width: i32,
        dashed: bool,
    ) {
        let len = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
        let n = (len.ceil() as usize).max(1) * 2;
        for k in 0..=n {
            let t = k as f64 / n as f64;
            if dashed && ((t * len) as i64 / 6) % 2 == 1 {
                continue;
            }
            let x = (x0 + t * (x1 - x0)).round() as i32;
            let y = (y0 + t * (y1 - y0)).round() as i32;
            for dx in 0..width {
                for dy in 0..width {
                    self.put(x + dx - width / 2, y + dy - width / 2, c);
                }
            }
        }
    }

    fn text(&mut self, x: i32, y: i32, s: &str, scale: i32, c: (u8, u8, u8)) {
        let mut cx = x;
        for ch in s.chars() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits >> (4 - col) & 1 == 1 {
                        for sx in 0..scale {
                            for sy in 0..scale {
                                self.put(cx + col * scale + sx, y + row as i32 * scale + sy, c);
                            }
                        }
                    }
                }
            }
            cx += 6 * scale;
        }
    }

    fn text_right(&mut self, x: i32, y: i32, s: &str, scale: i32, c: (u8, u8, u8)) {
        self.text(x - text_width(s, scale), y, s, scale, c);
    }

    /// Text rotated 90° counter-clockwise, centred on (x, yc).
    fn text_vertical(&mut self, x: i32, yc: i32, s: &str, scale: i32, c: (u8, u8, u8)) {
        let mut cy = yc + text_width(s, scale) / 2;
        for ch in s.chars() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits >> (4 - col) & 1 == 1 {
                        for sx in 0..scale {
                            for sy in 0..scale {
                                self.put(x + row as i32 * scale + sx, cy - col * scale - sy, c);
                            }
                        }
                    }
                }
            }
            cy -= 6 * scale;
        }
    }
}

fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 6 * scale
}

/// 5×7 glyphs (HD44780 style), rows top to bottom, bit 4 is the leftmost column.
/// Upper-case letters are drawn with the lower-case glyphs except a few distinct ones.
fn glyph(ch: char) -> [u8; 7] {
    match ch {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'a' => [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
        'b' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E],
        'c' => [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E],
        'd' => [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
        'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        'f' => [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
        'g' => [0x00, 0x00, 0x0F, 0x11, 0x0F, 0x01, 0x0E],
        'h' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
        'i' => [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E],
        'j' => [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C],
        'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
        'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'm' => [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11],
        'n' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
        'o' => [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
        'p' => [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        'q' => [0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01],
        'r' => [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
        's' => [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E],
        't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
        'u' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D],
        'v' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'w' => [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A],
        'x' => [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11],
        'y' => [0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'z' => [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        'µ' | 'μ' => [0x00, 0x00, 0x11, 0x11, 0x13, 0x1D, 0x10],
        'η' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x01],
        '−' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        c if c.is_ascii_uppercase() => glyph(c.to_ascii_lowercase()),
        _ => [0; 7],
    }
}

// ---- PNG encoding: zlib stream with fixed-Huffman deflate and run-length matches ----

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (n, t) in table.iter_mut().enumerate() {
        let mut c = n as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += x as u32;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    /// Writes `len` bits of `v`, least significant first.
    fn bits(&mut self, v: u32, len: u32) {
        self.acc |= (v as u64) << self.n;
        self.n += len;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Writes a Huffman code (most significant bit first).
    fn code(&mut self, code: u32, len: u32) {
        let rev = code.reverse_bits() >> (32 - len);
        self.bits(rev, len);
    }

    fn literal(&mut self, v: u32) {
        match v {
            0..=143 => self.code(0x30 + v, 8),
            144..=255 => self.code(0x190 + v - 144, 9),
            256..=279 => self.code(v - 256, 7),
            _ => self.code(0xC0 + v - 280, 8),
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

const LEN_BASE: [u32; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u32; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];

/// Deflate with fixed Huffman codes; repeats of the byte `dist` back become matches.
fn deflate(data: &[u8], dist: usize) -> Vec<u8> {
    let mut w = BitWriter {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    w.bits(1, 1); // final block
    w.bits(1, 2); // fixed Huffman
    let mut i = 0;
    while i < data.len() {
        let mut run = 0;
        if i >= dist {
            while run < 258 && i + run < data.len() && data[i + run] == data[i + run - dist] {
                run += 1;
            }
        }
        if run >= 3 {
            let idx = LEN_BASE
                .iter()
                .rposition(|&b| b as usize <= run)
                .unwrap_or(0);
            w.literal(257 + idx as u32);
            if LEN_EXTRA[idx] > 0 {
                w.bits(run as u32 - LEN_BASE[idx], LEN_EXTRA[idx]);
            }
            // Distance code for `dist` (1 or 3 here: codes 0 and 2, no extra bits).
            let dcode = match dist {
                1 => 0,
                2 => 1,
                3 => 2,
                _ => 3,
            };
            w.code(dcode, 5);
            i += run;
        } else {
            w.literal(data[i] as u32);
            i += 1;
        }
    }
    w.literal(256);
    w.finish()
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = Vec::with_capacity(4 + data.len());
    body.extend_from_slice(kind);
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// Encodes 8-bit RGB pixels as PNG.
pub fn encode_png(w: u32, h: u32, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity((w as usize * 3 + 1) * h as usize);
    for row in rgb.chunks(w as usize * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    z.extend(deflate(&raw, 3));
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_adler_known_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn svg_and_png_are_well_formed() {
        let p = Plot {
            title: "test".into(),
            x_label: "distance (km)".into(),
            y_label: "rate".into(),
            series: vec![
                Series {
                    label: "a".into(),
                    points: (0..20).map(|i| (i as f64, 10f64.powi(-i / 2))).collect(),
                    dashed: false,
                },
                Series {
                    label: "PLOB".into(),
                    points: (0..20).map(|i| (i as f64, 10f64.powi(1 - i / 3))).collect(),
                    dashed: true,
                },
            ],
        };
        let svg = p.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("polyline") && svg.contains("stroke-dasharray"));
        let png = p.to_png();
        assert_eq!(&png[..8], &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        assert!(png.len() < 200_000, "png {} bytes", png.len());
    }
}
