//! Every SIMD kernel against the scalar reference, including dimensions that are not a
//! multiple of the vector width.

use quiver_ivf::Rng;
use quiver_ivf::kernels::{self, tile::TILE_C, tile::TILE_P};

const DIMS: [usize; 14] = [1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 128, 257];

fn close(a: f32, b: f32, what: &str) {
    let tol = 1e-4 * (1.0 + a.abs().max(b.abs()));
    assert!((a - b).abs() <= tol, "{what}: {a} vs reference {b}");
}

fn vecs(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

#[test]
fn detection_picks_an_available_table() {
    let names: Vec<&str> = kernels::available().iter().map(|k| k.name).collect();
    assert_eq!(names[0], "scalar");
    assert!(names.contains(&kernels::get().name));
}

#[test]
fn distance_kernels_match_scalar() {
    let reference = kernels::scalar();
    let mut rng = Rng::new(1);
    for k in kernels::available() {
        for &d in &DIMS {
            let (a, b) = (vecs(&mut rng, d), vecs(&mut rng, d));
            close(
                (k.l2)(&a, &b),
                (reference.l2)(&a, &b),
                &format!("{} l2 d={d}", k.name),
            );
            close(
                (k.dot)(&a, &b),
                (reference.dot)(&a, &b),
                &format!("{} dot d={d}", k.name),
            );
            for rows in [1, 3, 4, 5, 13] {
                let data = vecs(&mut rng, rows * d);
                let (mut got, mut want) = (vec![0.0; rows], vec![0.0; rows]);
                (k.l2_batch)(&a, &data, &mut got);
                (reference.l2_batch)(&a, &data, &mut want);
                for i in 0..rows {
                    close(
                        got[i],
                        want[i],
                        &format!("{} l2_batch d={d} rows={rows}", k.name),
                    );
                }
                (k.dot_batch)(&a, &data, &mut got);
                (reference.dot_batch)(&a, &data, &mut want);
                for i in 0..rows {
                    close(
                        got[i],
                        want[i],
                        &format!("{} dot_batch d={d} rows={rows}", k.name),
                    );
                }
            }
        }
    }
}

#[test]
fn code_kernels_match_scalar() {
    let reference = kernels::scalar();
    let mut rng = Rng::new(2);
    for k in kernels::available() {
        for &d in &DIMS {
            let w = vecs(&mut rng, d);
            for rows in [1, 2, 3, 7] {
                let codes: Vec<u8> = (0..rows * d).map(|_| rng.below(256) as u8).collect();
                let (mut got, mut want) = (vec![0.0; rows], vec![0.0; rows]);
                (k.sq8_dot_batch)(&w, &codes, &mut got);
                (reference.sq8_dot_batch)(&w, &codes, &mut want);
                for i in 0..rows {
                    close(
                        got[i],
                        want[i],
                        &format!("{} sq8 d={d} rows={rows}", k.name),
                    );
                }
            }
        }
        for m in [1, 3, 4, 8, 16, 33] {
            let lut = vecs(&mut rng, m * 256);
            let rows = 9;
            let codes: Vec<u8> = (0..rows * m).map(|_| rng.below(256) as u8).collect();
            let (mut got, mut want) = (vec![0.0; rows], vec![0.0; rows]);
            (k.pq_scan)(&lut, &codes, &mut got);
            (reference.pq_scan)(&lut, &codes, &mut want);
            for i in 0..rows {
                close(got[i], want[i], &format!("{} pq m={m}", k.name));
            }
        }
    }
}

/// The conversion must round exactly as the scalar reference (bit for bit, so the copies do
/// not depend on the CPU), including magnitudes from subnormal to overflow.
#[test]
fn half_conversion_matches_scalar() {
    let reference = kernels::scalar();
    let mut rng = Rng::new(8);
    for k in kernels::available() {
        for &d in &DIMS {
            let mut x = vecs(&mut rng, d);
            for (i, v) in x.iter_mut().enumerate() {
                *v *= [1e-7f32, 1e-3, 1.0, 300.0, 1e4][i % 5];
            }
            let (mut got, mut want) = (vec![0u16; d], vec![0u16; d]);
            let (ge, gn) = (k.to_half)(&x, &mut got);
            let (we, wn) = (reference.to_half)(&x, &mut want);
            assert_eq!(got, want, "{} to_half d={d}", k.name);
            close(ge, we, &format!("{} to_half error d={d}", k.name));
            close(gn, wn, &format!("{} to_half norm d={d}", k.name));
        }
    }
}

#[test]
fn half_precision_kernels_match_scalar() {
    let reference = kernels::scalar();
    let mut rng = Rng::new(5);
    for k in kernels::available() {
        for &d in &DIMS {
            let q = vecs(&mut rng, d);
            for rows in [1, 3, 4, 5, 9] {
                let data: Vec<u16> = vecs(&mut rng, rows * d)
                    .into_iter()
                    .map(quiver_ivf::half::f32_to_f16)
                    .collect();
                let (mut got, mut want) = (vec![0.0; rows], vec![0.0; rows]);
                (k.l2_batch_f16)(&q, &data, &mut got);
                (reference.l2_batch_f16)(&q, &data, &mut want);
                for i in 0..rows {
                    close(
                        got[i],
                        want[i],
                        &format!("{} l2 f16 d={d} rows={rows}", k.name),
                    );
                }
                (k.dot_batch_f16)(&q, &data, &mut got);
                (reference.dot_batch_f16)(&q, &data, &mut want);
                for i in 0..rows {
                    close(
                        got[i],
                        want[i],
                        &format!("{} dot f16 d={d} rows={rows}", k.name),
                    );
                }
            }
        }
    }
}

/// `columns` (with and without a base) and `l2_columns`, over the dimension-major layout of
/// PQ codebooks.
#[test]
fn column_kernels_match_scalar() {
    let reference = kernels::scalar();
    let mut rng = Rng::new(4);
    for k in kernels::available() {
        for &n in &DIMS {
            for w_len in [1usize, 2, 8, 17] {
                let w = vecs(&mut rng, w_len);
                let cols = vecs(&mut rng, w_len * n);
                let base = vecs(&mut rng, n);
                let run = |what: &str, f: &dyn Fn(&kernels::Kernels, &mut [f32])| {
                    let (mut got, mut want) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                    f(k, &mut got);
                    f(reference, &mut want);
                    for i in 0..n {
                        close(
                            got[i],
                            want[i],
                            &format!("{} {what} n={n} w={w_len}", k.name),
                        );
                    }
                };
                run("columns", &|k, out| (k.columns)(&w, &cols, None, -2.0, out));
                run("columns+base", &|k, out| {
                    (k.columns)(&w, &cols, Some(&base), -2.0, out)
                });
                run("l2_columns", &|k, out| (k.l2_columns)(&w, &cols, out));
            }
        }
    }
}

#[test]
fn tile_kernels_match_scalar() {
    let reference = kernels::scalar();
    let mut rng = Rng::new(3);
    for k in kernels::available() {
        for &d in &DIMS {
            let xt = vecs(&mut rng, d * TILE_P);
            let panel = vecs(&mut rng, d * TILE_C);
            let mut got = [[0f32; TILE_C]; TILE_P];
            let mut want = [[0f32; TILE_C]; TILE_P];
            (k.dot_tile)(&xt, &panel, &mut got);
            (reference.dot_tile)(&xt, &panel, &mut want);
            for p in 0..TILE_P {
                for j in 0..TILE_C {
                    close(got[p][j], want[p][j], &format!("{} tile d={d}", k.name));
                }
            }
        }
    }
}
