//! A structural pass over a `torch.save` pickle before burn-store reads it. It executes nothing
//! (no pickle code ever runs here or in burn-store): it only follows the opcodes' stack effects to
//! bound the nesting depth and the number of objects (a deeply nested pickle would overflow the
//! reader's stack; memo references can blow a few bytes up into billions of objects), and collects
//! the persistent ids of the tensor storages (`('storage', type, key, location, numel)`) so that a
//! missing or short storage entry is an error rather than a tensor of zeros.

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::rc::Rc;

/// Deepest nesting accepted (a state dict nests about 5 deep).
pub const MAX_DEPTH: u32 = 256;
/// Most objects a pickle may describe (memo copies included).
pub const MAX_OBJECTS: u64 = 50_000_000;

/// One storage a pickle refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    /// `torch FloatStorage` and the like (module and name of the GLOBAL).
    pub kind: String,
    /// Elements of the storage (`None` when the id does not say).
    pub numel: Option<u64>,
}

impl StorageRef {
    /// Bytes per element of the storage type, when known.
    pub fn element_size(&self) -> Option<u64> {
        let name = self.kind.rsplit(['.', ' ']).next().unwrap_or("");
        Some(match name {
            "DoubleStorage" | "LongStorage" => 8,
            "FloatStorage" | "IntStorage" => 4,
            "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
            "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
            _ => return None,
        })
    }
}

#[derive(Clone)]
enum Atom {
    Str(Rc<str>),
    Int(i64),
    Global(Rc<str>),
    Tuple(Rc<Vec<Val>>),
    Other,
}

#[derive(Clone)]
struct Val {
    depth: u32,
    size: u64,
    atom: Atom,
}

impl Val {
    fn leaf(atom: Atom) -> Self {
        Val {
            depth: 1,
            size: 1,
            atom,
        }
    }
}

enum Slot {
    Mark,
    V(Val),
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u64, Val>,
    storages: Vec<StorageRef>,
}

impl<'a> Scanner<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .with_context(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn uint(&mut self, n: usize) -> Result<u64> {
        let s = self.take(n)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(s);
        Ok(u64::from_le_bytes(v))
    }
    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.b[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .with_context(|| format!("unterminated line at byte {}", self.pos))?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }
    fn sized(&mut self, len_bytes: usize) -> Result<&'a [u8]> {
        let n = self.uint(len_bytes)?;
        self.take(usize::try_from(n).context("length overflows")?)
    }
    fn push(&mut self, v: Val) -> Result<()> {
        ensure!(
            v.depth <= MAX_DEPTH,
            "nests deeper than {MAX_DEPTH} levels (at byte {})",
            self.pos
        );
        ensure!(
            v.size <= MAX_OBJECTS,
            "describes more than {MAX_OBJECTS} objects (at byte {})",
            self.pos
        );
        self.stack.push(Slot::V(v));
        Ok(())
    }
    fn pop(&mut self) -> Result<Val> {
        match self.stack.pop() {
            Some(Slot::V(v)) => Ok(v),
            Some(Slot::Mark) => bail!("unexpected mark at byte {}", self.pos),
            None => bail!("stack underflow at byte {}", self.pos),
        }
    }
    fn pop_mark(&mut self) -> Result<Vec<Val>> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Slot::V(v)) => items.push(v),
                Some(Slot::Mark) => break,
                None => bail!("no mark to pop at byte {}", self.pos),
            }
        }
        items.reverse();
        Ok(items)
    }
    /// A new object holding `items` (tuple items kept for the storage ids).
    fn combine(items: Vec<Val>, tuple: bool) -> Val {
        let depth = 1 + items.iter().map(|v| v.depth).max().unwrap_or(0);
        let size = 1 + items.iter().map(|v| v.size).sum::<u64>();
        let atom = if tuple {
            Atom::Tuple(Rc::new(items))
        } else {
            Atom::Other
        };
        Val { depth, size, atom }
    }
    /// The object on top of the stack absorbs `items` (APPEND, SETITEM, BUILD, …).
    fn absorb(&mut self, items: Vec<Val>) -> Result<()> {
        let mut top = self.pop()?;
        for v in items {
            top.depth = top.depth.max(v.depth + 1);
            top.size = top.size.saturating_add(v.size);
        }
        top.atom = Atom::Other;
        self.push(top)
    }
    fn persistent_id(&mut self, pid: &Val) {
        let Atom::Tuple(items) = &pid.atom else {
            return;
        };
        let text = |i: usize| match items.get(i).map(|v| &v.atom) {
            Some(Atom::Str(s)) | Some(Atom::Global(s)) => Some(s.to_string()),
            _ => None,
        };
        if text(0).as_deref() != Some("storage") {
            return;
        }
        if let Some(key) = text(2) {
            let numel = match items.get(4).map(|v| &v.atom) {
                Some(Atom::Int(n)) if *n >= 0 => Some(*n as u64),
                _ => None,
            };
            self.storages.push(StorageRef {
                key,
                kind: text(1).unwrap_or_default(),
                numel,
            });
        }
    }

    /// Run to the STOP opcode of one pickle.
    fn run(&mut self) -> Result<()> {
        let str_atom = |s: &[u8]| Atom::Str(Rc::from(String::from_utf8_lossy(s).as_ref()));
        loop {
            let op = self.take(1).context("no STOP opcode")?[0];
            match op {
                b'.' => return Ok(()),
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    self.stack.pop().context("POP on an empty stack")?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.pop()?;
                    self.push(v.clone())?;
                    self.push(v)?;
                }
                b'F' | b'P' | b'S' | b'V' => {
                    let l = self.line()?;
                    let atom = if op == b'V' { str_atom(l) } else { Atom::Other };
                    let v = Val::leaf(atom);
                    if op == b'P' {
                        self.persistent_id(&v);
                    }
                    self.push(v)?;
                }
                b'I' | b'L' => {
                    let l = self.line()?;
                    let text = String::from_utf8_lossy(l);
                    let n = text.trim_end_matches('L').trim().parse::<i64>().ok();
                    self.push(Val::leaf(n.map_or(Atom::Other, Atom::Int)))?;
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32 as i64;
                    self.push(Val::leaf(Atom::Int(v)))?;
                }
                b'K' => {
                    let v = self.uint(1)? as i64;
                    self.push(Val::leaf(Atom::Int(v)))?;
                }
                b'M' => {
                    let v = self.uint(2)? as i64;
                    self.push(Val::leaf(Atom::Int(v)))?;
                }
                0x8a | 0x8b => {
                    let s = self.sized(if op == 0x8a { 1 } else { 4 })?;
                    let atom = if s.len() <= 8 && !s.is_empty() {
                        let mut v = [if s[s.len() - 1] & 0x80 != 0 { 0xff } else { 0 }; 8];
                        v[..s.len()].copy_from_slice(s);
                        Atom::Int(i64::from_le_bytes(v))
                    } else {
                        Atom::Int(0)
                    };
                    self.push(Val::leaf(atom))?;
                }
                b'N' | 0x88 | 0x89 | b')' | b']' | b'}' | 0x8f | 0x97 => {
                    self.push(Val::leaf(Atom::Other))?
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Val::leaf(Atom::Other))?;
                }
                b'T' | b'B' => {
                    self.sized(4)?;
                    self.push(Val::leaf(Atom::Other))?;
                }
                b'U' | b'C' => {
                    self.sized(1)?;
                    self.push(Val::leaf(Atom::Other))?;
                }
                0x8e | 0x96 => {
                    self.sized(8)?;
                    self.push(Val::leaf(Atom::Other))?;
                }
                b'X' => {
                    let s = self.sized(4)?;
                    self.push(Val::leaf(str_atom(s)))?;
                }
                0x8c => {
                    let s = self.sized(1)?;
                    self.push(Val::leaf(str_atom(s)))?;
                }
                0x8d => {
                    let s = self.sized(8)?;
                    self.push(Val::leaf(str_atom(s)))?;
                }
                b'c' => {
                    let module = String::from_utf8_lossy(self.line()?).into_owned();
                    let name = String::from_utf8_lossy(self.line()?).into_owned();
                    let g = Atom::Global(Rc::from(format!("{module} {name}").as_str()));
                    self.push(Val::leaf(g))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let text = |v: &Val| match &v.atom {
                        Atom::Str(s) => s.to_string(),
                        _ => String::new(),
                    };
                    let g = format!("{} {}", text(&module), text(&name));
                    self.push(Val::leaf(Atom::Global(Rc::from(g.as_str()))))?;
                }
                b'i' => {
                    self.line()?;
                    self.line()?;
                    let items = self.pop_mark()?;
                    self.push(Self::combine(items, false))?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.persistent_id(&pid);
                    self.push(Val::leaf(Atom::Other))?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    self.push(Self::combine(vec![f, args], false))?;
                }
                0x92 => {
                    let kw = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(Self::combine(vec![cls, args, kw], false))?;
                }
                b'a' | b'b' => {
                    let v = self.pop()?;
                    self.absorb(vec![v])?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.absorb(vec![k, v])?;
                }
                b'e' | b'u' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.absorb(items)?;
                }
                b'd' | b'l' | b'o' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Self::combine(items, false))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Self::combine(items, true))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items: Vec<Val> = (0..n).map(|_| self.pop()).collect::<Result<_>>()?;
                    items.reverse();
                    self.push(Self::combine(items, true))?;
                }
                b'g' | b'h' | b'j' => {
                    let idx = match op {
                        b'g' => String::from_utf8_lossy(self.line()?)
                            .trim()
                            .parse::<u64>()
                            .context("bad GET index")?,
                        b'h' => self.uint(1)?,
                        _ => self.uint(4)?,
                    };
                    let v = self
                        .memo
                        .get(&idx)
                        .cloned()
                        .with_context(|| format!("memo entry {idx} used before it is set"))?;
                    self.push(v)?;
                }
                b'p' | b'q' | b'r' | 0x94 => {
                    let idx = match op {
                        b'p' => String::from_utf8_lossy(self.line()?)
                            .trim()
                            .parse::<u64>()
                            .context("bad PUT index")?,
                        b'q' => self.uint(1)?,
                        b'r' => self.uint(4)?,
                        _ => self.memo.len() as u64,
                    };
                    let top = match self.stack.last() {
                        Some(Slot::V(v)) => v.clone(),
                        _ => bail!("memoizing an empty stack at byte {}", self.pos),
                    };
                    self.memo.insert(idx, top);
                }
                0x80 => {
                    self.take(1)?;
                }
                0x95 => {
                    self.take(8)?;
                }
                0x98 => {}
                0x82 => {
                    self.take(1)?;
                    self.push(Val::leaf(Atom::Other))?;
                }
                0x83 => {
                    self.take(2)?;
                    self.push(Val::leaf(Atom::Other))?;
                }
                0x84 => {
                    self.take(4)?;
                    self.push(Val::leaf(Atom::Other))?;
                }
                other => bail!(
                    "unknown pickle opcode 0x{other:02x} at byte {}",
                    self.pos - 1
                ),
            }
        }
    }
}

/// Check the first `count` pickles of `bytes` (one for a zip checkpoint's `data.pkl`; the legacy
/// format stores magic number, protocol, sys info and the data as four pickles in a row) and
/// return the storages they refer to and the byte offset after the last one.
pub fn scan(bytes: &[u8], count: usize) -> Result<(Vec<StorageRef>, usize)> {
    let mut s = Scanner {
        b: bytes,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        storages: Vec::new(),
    };
    for i in 0..count {
        if i > 0 && s.pos == bytes.len() {
            break; // a plain pickle file holds one
        }
        s.stack.clear();
        s.memo.clear();
        s.run()?;
    }
    Ok((s.storages, s.pos))
}
