//! A safe unpickler: Python's pickle protocols 0–5, read into plain data, never running code.
//!
//! A pickle is a program for a stack machine whose `GLOBAL`/`STACK_GLOBAL` opcodes import any
//! Python callable and whose `REDUCE`/`NEWOBJ`/`BUILD` opcodes call it. This reader replaces
//! every callable with a data constructor from a fixed allow-list ([`Global`]): the containers
//! torch and fairseq pickle (`collections.OrderedDict`, `argparse.Namespace`, sets), torch's
//! tensor rebuilders and storage types, and numpy's scalar rebuilders. Any other global is an
//! error naming it ([`PickleError::ForbiddenGlobal`]), before anything is built.
//!
//! Objects are kept in an arena and the memo refers to arena slots, so that a dict memoized
//! while empty and filled later (what `SETITEMS` after `BINPUT` does) is seen filled through
//! every reference, as in Python. [`Unpickler::load`] then resolves the arena into a tree of
//! [`Value`]s; shared objects are copied, under a budget proportional to the input's length
//! (it counts nodes and the bytes of strings, at every `GET` and in the tree, so that many
//! references to one object or one long string cannot make the result explode), and cycles
//! are refused.
//!
//! Lengths read from the input (strings, bytes, big integers) are checked against the bytes
//! left before anything is allocated, so a corrupt or hostile length field cannot make the
//! reader allocate more than the input's size. Persistent ids (torch's storages) are handed to
//! the caller as [`Value::PersistentId`] holding the id's value.

use std::collections::HashMap;

/// Errors of [`Unpickler::load`]; each carries the byte offset of the opcode at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PickleError {
    /// The input ended inside an opcode or before `STOP`.
    #[error("pickle truncated at byte {offset}")]
    Truncated {
        /// Where the missing bytes should have been.
        offset: usize,
    },
    /// A global outside the allow-list.
    #[error(
        "pickle byte {offset}: global {module}.{name} is not allowed (this reader only builds \
         data: {allowed})",
        allowed = Global::ALLOWED_SUMMARY
    )]
    ForbiddenGlobal {
        /// Where the opcode is.
        offset: usize,
        /// The module.
        module: String,
        /// The name.
        name: String,
    },
    /// An opcode this reader does not implement, or one that would run code (`INST`, `OBJ`,
    /// `EXT*`).
    #[error("pickle byte {offset}: unsupported opcode 0x{opcode:02x}")]
    UnsupportedOpcode {
        /// Where the opcode is.
        offset: usize,
        /// The opcode.
        opcode: u8,
    },
    /// A well-formed opcode applied to the wrong kind of operands.
    #[error("pickle byte {offset}: {message}")]
    Invalid {
        /// Where the opcode is.
        offset: usize,
        /// What is wrong.
        message: String,
    },
}

/// `Result` with [`PickleError`].
pub type PickleResult<T> = std::result::Result<T, PickleError>;

/// The callables a pickle may name: data constructors only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Global {
    /// `collections.OrderedDict`: a dict.
    OrderedDict,
    /// `argparse.Namespace`: an object with attributes.
    Namespace,
    /// `builtins.set` / `builtins.frozenset` (and Python 2's `__builtin__`): a list.
    Set,
    /// `copyreg._reconstructor` (protocols 0–1): `object.__new__(cls)` for an allowed `cls`.
    Reconstructor,
    /// `builtins.object`, the base `copyreg._reconstructor` is called with.
    Object,
    /// `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor`: a view of a storage.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`: the tensor it wraps.
    RebuildParameter,
    /// A torch storage type (`torch.FloatStorage`, …), its element type.
    Storage(DType),
    /// `torch.Size`: a tuple.
    TorchSize,
    /// `numpy.core.multiarray.scalar`, `numpy.dtype` and `numpy.ndarray`-free scalars kept
    /// opaque (fairseq stores metrics as numpy scalars).
    Numpy(&'static str),
}

impl Global {
    const ALLOWED_SUMMARY: &'static str = "collections.OrderedDict, argparse.Namespace, sets, \
        torch._utils._rebuild_tensor(_v2)/_rebuild_parameter, torch.*Storage, torch.Size, \
        numpy scalars and dtypes";

    /// The allowed global `module.name`, or `None`.
    pub fn resolve(module: &str, name: &str) -> Option<Global> {
        let g = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("argparse", "Namespace") => Global::Namespace,
            ("builtins" | "__builtin__", "set" | "frozenset") => Global::Set,
            ("builtins" | "__builtin__", "object") => Global::Object,
            ("copyreg" | "copy_reg", "_reconstructor") => Global::Reconstructor,
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", "Size") => Global::TorchSize,
            ("torch", storage) => Global::Storage(DType::of_storage(storage)?),
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => {
                Global::Numpy("scalar")
            }
            ("numpy", "dtype") => Global::Numpy("dtype"),
            _ => return None,
        };
        Some(g)
    }
}

/// Element types of torch storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DType {
    /// `torch.float32`.
    F32,
    /// `torch.float16`.
    F16,
    /// `torch.bfloat16`.
    BF16,
    /// `torch.float64`.
    F64,
    /// `torch.int64`.
    I64,
    /// `torch.int32`.
    I32,
    /// `torch.int16`.
    I16,
    /// `torch.int8`.
    I8,
    /// `torch.uint8` (also untyped storages, counted in bytes).
    U8,
    /// `torch.bool`.
    Bool,
}

impl DType {
    /// The type of a torch storage class name (`FloatStorage`, …).
    pub fn of_storage(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" | "UntypedStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Whether the type is a floating-point one.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }
}

/// A pickled value as plain data.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A larger integer, as little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A string (Python 2 byte strings are read as Latin-1).
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A list, or a set.
    List(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A dict or `OrderedDict`, entries in insertion order.
    Dict(Vec<(Value, Value)>),
    /// An allowed callable, not (yet) called.
    Global(Global),
    /// An object: `argparse.Namespace` (attributes in `state`), a tensor rebuilt by torch
    /// (`class` [`Global::RebuildTensor`], `args` the rebuilder's arguments), a numpy scalar …
    Object {
        /// Its constructor.
        class: Global,
        /// The constructor's arguments.
        args: Vec<Value>,
        /// What `BUILD` set (`__dict__` or `(__dict__, slots)`), if anything.
        state: Option<Box<Value>>,
    },
    /// A persistent id (`BINPERSID`/`PERSID`): torch's reference to a storage.
    PersistentId(Box<Value>),
}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one (bools count as 0/1, as in Python).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The entry `key` of a dict, or the attribute `key` of an object (an `argparse.Namespace`
    /// or an object restored with a `__dict__`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(entries) => {
                entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
            }
            Value::Object { state: Some(state), .. } => match state.as_ref() {
                Value::Tuple(parts) => parts.first()?.get(key),
                other => other.get(key),
            },
            _ => None,
        }
    }

    /// The string-keyed entries of a dict or the attributes of an object, in order.
    pub fn entries(&self) -> Vec<(&str, &Value)> {
        match self {
            Value::Dict(entries) => {
                entries.iter().filter_map(|(k, v)| Some((k.as_str()?, v))).collect()
            }
            Value::Object { state: Some(state), .. } => match state.as_ref() {
                Value::Tuple(parts) => parts.first().map(Value::entries).unwrap_or_default(),
                other => other.entries(),
            },
            _ => Vec::new(),
        }
    }

    /// A short description of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) | Value::BigInt(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "a list",
            Value::Tuple(_) => "a tuple",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class or function",
            Value::Object { .. } => "an object",
            Value::PersistentId(_) => "a persistent id",
        }
    }
}

/// A slot of the arena: the mutable objects the memo may refer to.
#[derive(Debug)]
enum Slot {
    List(Vec<Item>),
    Dict(Vec<(Item, Item)>),
    Object { class: Global, args: Vec<Item>, state: Option<Item> },
}

/// A stack or memo entry: an immutable value, or a reference to an arena slot.
#[derive(Debug, Clone)]
enum Item {
    Leaf(Value),
    Tuple(Vec<Item>),
    Ref(usize),
    PersistentId(Box<Item>),
    Mark,
}

/// The reader of one pickle (see the module docs).
pub struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    op_at: usize,
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: HashMap<u64, Item>,
    arena: Vec<Slot>,
    /// What copying may still cost (nodes plus bytes of strings), at `GET`s and in
    /// [`Unpickler::resolve`]: bounded by the input's length, so that references to one large
    /// value cannot amplify it.
    budget: usize,
}

/// What copying `v` costs: one node, plus the bytes it holds.
fn value_cost(v: &Value) -> usize {
    1 + match v {
        Value::Str(s) => s.len(),
        Value::Bytes(b) | Value::BigInt(b) => b.len(),
        _ => 0,
    }
}

/// What copying `item` costs (a reference is one node: its slot is not copied).
fn item_cost(item: &Item) -> usize {
    match item {
        Item::Leaf(v) => value_cost(v),
        Item::Tuple(items) => items.iter().fold(1usize, |n, i| n.saturating_add(item_cost(i))),
        Item::PersistentId(i) => 1usize.saturating_add(item_cost(i)),
        Item::Ref(_) | Item::Mark => 1,
    }
}

const MAX_DEPTH: usize = 200;

impl<'a> Unpickler<'a> {
    /// A reader of the pickle at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            op_at: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            arena: Vec::new(),
            // Copies may cost 16 times the input, which no checkpoint comes near.
            budget: data.len().saturating_mul(16).max(1024),
        }
    }

    /// Reads one pickle (up to its `STOP`) and returns its value and the number of bytes it
    /// took (the next pickle of a stream starts there).
    pub fn load(data: &'a [u8]) -> PickleResult<(Value, usize)> {
        let mut u = Self::new(data);
        let item = u.run()?;
        let value = u.resolve(&item, 0, &mut Vec::new())?;
        Ok((value, u.pos))
    }

    fn invalid<T>(&self, message: impl Into<String>) -> PickleResult<T> {
        Err(PickleError::Invalid { offset: self.op_at, message: message.into() })
    }

    fn take(&mut self, n: usize) -> PickleResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated { offset: self.data.len() })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> PickleResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> PickleResult<[u8; N]> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
    }

    /// A length field: refused when it exceeds what is left of the input.
    fn len(&mut self, n: u64) -> PickleResult<usize> {
        let left = self.data.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= left => Ok(n),
            _ => Err(PickleError::Truncated { offset: self.data.len() }),
        }
    }

    fn line(&mut self) -> PickleResult<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated { offset: self.data.len() })?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).or_else(|_| self.invalid("a text argument is not UTF-8"))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Item::Leaf(v));
    }

    fn pop(&mut self) -> PickleResult<Item> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.invalid("stack underflow");
        }
        self.stack.pop().map_or_else(|| self.invalid("stack underflow"), Ok)
    }

    fn pop_mark(&mut self) -> PickleResult<Vec<Item>> {
        let Some(mark) = self.marks.pop() else {
            return self.invalid("no MARK on the stack");
        };
        Ok(self.stack.split_off(mark))
    }

    fn top_slot(&self) -> PickleResult<usize> {
        match self.stack.last() {
            Some(Item::Ref(i)) => Ok(*i),
            _ => self.invalid("expected a list, dict or object on the stack"),
        }
    }

    fn new_slot(&mut self, slot: Slot) -> Item {
        self.arena.push(slot);
        Item::Ref(self.arena.len() - 1)
    }

    fn spend(&mut self, cost: usize) -> PickleResult<()> {
        match self.budget.checked_sub(cost) {
            Some(b) => {
                self.budget = b;
                Ok(())
            }
            None => self.invalid("too many copies of shared values (the value would explode)"),
        }
    }

    fn memo_get(&mut self, key: u64) -> PickleResult<Item> {
        let item = match self.memo.get(&key) {
            Some(item) => item.clone(),
            None => return self.invalid(format!("memo {key} unset")),
        };
        self.spend(item_cost(&item))?;
        Ok(item)
    }

    fn memo_put(&mut self, key: u64) -> PickleResult<()> {
        let Some(top) = self.stack.last().cloned() else {
            return self.invalid("PUT on an empty stack");
        };
        if matches!(top, Item::Mark) {
            return self.invalid("PUT of a MARK");
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> PickleResult<()> {
        match Global::resolve(module, name) {
            Some(g) => {
                self.push(Value::Global(g));
                Ok(())
            }
            None => Err(PickleError::ForbiddenGlobal {
                offset: self.op_at,
                module: module.to_string(),
                name: name.to_string(),
            }),
        }
    }

    fn as_global(&self, item: &Item) -> PickleResult<Global> {
        match item {
            Item::Leaf(Value::Global(g)) => Ok(*g),
            _ => self.invalid("REDUCE/NEWOBJ of something that is not a class or function"),
        }
    }

    /// `callable(*args)` for an allowed callable.
    fn call(&mut self, callable: Global, args: Vec<Item>) -> PickleResult<Item> {
        Ok(match callable {
            Global::OrderedDict => {
                let mut entries = Vec::new();
                if let Some(first) = args.first() {
                    match first {
                        Item::Ref(i) => match &self.arena[*i] {
                            Slot::List(items) => {
                                for pair in items {
                                    match pair {
                                        Item::Tuple(kv) if kv.len() == 2 => {
                                            entries.push((kv[0].clone(), kv[1].clone()))
                                        }
                                        _ => return self.invalid("OrderedDict of non-pairs"),
                                    }
                                }
                            }
                            _ => return self.invalid("OrderedDict of something not a list"),
                        },
                        _ => return self.invalid("OrderedDict of something not a list"),
                    }
                }
                self.new_slot(Slot::Dict(entries))
            }
            Global::Set => {
                let items = match args.first() {
                    None => Vec::new(),
                    Some(Item::Ref(i)) => match &self.arena[*i] {
                        Slot::List(items) => items.clone(),
                        _ => return self.invalid("set of something not a list"),
                    },
                    Some(Item::Tuple(items)) => items.clone(),
                    Some(_) => return self.invalid("set of something not a list"),
                };
                self.new_slot(Slot::List(items))
            }
            Global::TorchSize => match args.into_iter().next() {
                Some(t @ Item::Tuple(_)) => t,
                _ => return self.invalid("torch.Size of something not a tuple"),
            },
            Global::Reconstructor => {
                let class = args.first().map(|c| self.as_global(c)).transpose()?;
                match class {
                    Some(Global::Namespace) => self.new_slot(Slot::Object {
                        class: Global::Namespace,
                        args: vec![],
                        state: None,
                    }),
                    _ => return self.invalid("copyreg._reconstructor of a class not allowed"),
                }
            }
            Global::RebuildParameter => match args.into_iter().next() {
                Some(t) => t,
                None => return self.invalid("_rebuild_parameter without a tensor"),
            },
            Global::Namespace | Global::RebuildTensor | Global::Numpy(_) => {
                self.new_slot(Slot::Object { class: callable, args, state: None })
            }
            Global::Object | Global::Storage(_) => {
                return self.invalid("a storage type or object called");
            }
        })
    }

    fn tuple_items(&self, item: Item) -> PickleResult<Vec<Item>> {
        match item {
            Item::Tuple(items) => Ok(items),
            _ => self.invalid("expected a tuple of arguments"),
        }
    }

    fn set_items(&mut self, slot: usize, items: Vec<Item>) -> PickleResult<()> {
        if !items.len().is_multiple_of(2) {
            return self.invalid("SETITEMS with an odd number of items");
        }
        let mut it = items.into_iter();
        let mut pairs = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        match &mut self.arena[slot] {
            Slot::Dict(entries) => {
                entries.extend(pairs);
                Ok(())
            }
            _ => self.invalid("SETITEM(S) on something not a dict"),
        }
    }

    fn append(&mut self, slot: usize, items: Vec<Item>) -> PickleResult<()> {
        match &mut self.arena[slot] {
            Slot::List(list) => {
                list.extend(items);
                Ok(())
            }
            _ => self.invalid("APPEND(S)/ADDITEMS on something not a list"),
        }
    }

    fn int_line(&mut self) -> PickleResult<Value> {
        let text = self.line()?.trim_end_matches('L');
        Ok(match text {
            "00" => Value::Bool(false),
            "01" => Value::Bool(true),
            t => match t.parse::<i64>() {
                Ok(v) => Value::Int(v),
                Err(_) => return self.invalid(format!("bad integer {t:?}")),
            },
        })
    }

    fn long_bytes(&mut self, n: usize) -> PickleResult<Value> {
        let bytes = self.take(n)?;
        if n <= 8 {
            let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 };
            let mut b = [fill; 8];
            b[..n].copy_from_slice(bytes);
            Ok(Value::Int(i64::from_le_bytes(b)))
        } else {
            Ok(Value::BigInt(bytes.to_vec()))
        }
    }

    fn string(&mut self, n: usize) -> PickleResult<Value> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Value::Str(s.to_string())),
            Err(_) => self.invalid("a str is not UTF-8"),
        }
    }

    /// Runs the opcodes up to `STOP`, returning the item on the stack then.
    fn run(&mut self) -> PickleResult<Item> {
        loop {
            self.op_at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return self.invalid(format!("pickle protocol {proto} (this reads 0-5)"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => {
                    let top = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return self.invalid("STOP with more than one item on the stack");
                    }
                    return Ok(top);
                }
                // Integers.
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Value::Int(v.into()));
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let v = self.long_bytes(n)?;
                    self.stack.push(Item::Leaf(v));
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.le()?);
                    let n = u64::try_from(n).or_else(|_| self.invalid("negative LONG4 size"))?;
                    let n = self.len(n)?;
                    let v = self.long_bytes(n)?;
                    self.stack.push(Item::Leaf(v));
                }
                b'I' | b'L' => {
                    let v = self.int_line()?;
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Value::Float(v));
                }
                b'F' => {
                    let t = self.line()?;
                    let v =
                        t.parse::<f64>().or_else(|_| self.invalid(format!("bad float {t:?}")))?;
                    self.push(Value::Float(v));
                }
                // Strings and bytes.
                b'X' => {
                    let n = u64::from(u32::from_le_bytes(self.le()?));
                    let n = self.len(n)?;
                    let v = self.string(n)?;
                    self.push(v);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.string(n)?;
                    self.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?);
                    let n = self.len(n)?;
                    let v = self.string(n)?;
                    self.push(v);
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'U' | b'C' => u64::from(self.u8()?),
                        0x8e | 0x96 => u64::from_le_bytes(self.le()?),
                        _ => u64::from(u32::from_le_bytes(self.le()?)),
                    };
                    let n = self.len(n)?;
                    let b = self.take(n)?;
                    // Python 2 `str` (BINSTRING) is text in practice: Latin-1.
                    let v = if matches!(op, b'T' | b'U') {
                        Value::Str(b.iter().map(|&c| char::from(c)).collect())
                    } else {
                        Value::Bytes(b.to_vec())
                    };
                    self.push(v);
                }
                b'V' => {
                    let t = self.line()?.to_string();
                    self.push(Value::Str(t));
                }
                b'S' => {
                    let t = self.line()?;
                    let t = t.trim();
                    let unquoted = t
                        .strip_prefix('\'')
                        .and_then(|t| t.strip_suffix('\''))
                        .or_else(|| t.strip_prefix('"').and_then(|t| t.strip_suffix('"')));
                    match unquoted {
                        Some(s) if !s.contains('\\') => {
                            let s = s.to_string();
                            self.push(Value::Str(s));
                        }
                        _ => return self.invalid("STRING with escapes is not supported"),
                    }
                }
                // Containers.
                b'(' => {
                    self.stack.push(Item::Mark);
                    self.marks.push(self.stack.len());
                }
                b')' => self.stack.push(Item::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.pop_mark_item()?;
                    self.stack.push(Item::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(Item::Tuple(items));
                }
                b']' => {
                    let r = self.new_slot(Slot::List(Vec::new()));
                    self.stack.push(r);
                }
                b'}' => {
                    let r = self.new_slot(Slot::Dict(Vec::new()));
                    self.stack.push(r);
                }
                0x8f => {
                    let r = self.new_slot(Slot::List(Vec::new()));
                    self.stack.push(r);
                }
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.pop_mark_item()?;
                    let r = self.new_slot(Slot::List(items));
                    self.stack.push(r);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.pop_mark_item()?;
                    let r = self.new_slot(Slot::Dict(Vec::new()));
                    let Item::Ref(slot) = r else { return self.invalid("dict") };
                    self.set_items(slot, items)?;
                    self.stack.push(r);
                }
                b'a' => {
                    let v = self.pop()?;
                    let slot = self.top_slot()?;
                    self.append(slot, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.pop_mark_item()?;
                    let slot = self.top_slot()?;
                    self.append(slot, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let slot = self.top_slot()?;
                    self.set_items(slot, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.pop_mark_item()?;
                    let slot = self.top_slot()?;
                    self.set_items(slot, items)?;
                }
                // Stack and memo.
                b'0' => {
                    if matches!(self.stack.last(), Some(Item::Mark)) {
                        self.marks.pop();
                        self.stack.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                    self.pop_mark_item()?;
                }
                b'2' => {
                    let top = self.pop()?;
                    self.stack.push(top.clone());
                    self.stack.push(top);
                }
                b'p' => {
                    let t = self.line()?;
                    let k = t.parse::<u64>().or_else(|_| self.invalid("bad PUT index"))?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = u64::from(self.u8()?);
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = u64::from(u32::from_le_bytes(self.le()?));
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let t = self.line()?;
                    let k = t.parse::<u64>().or_else(|_| self.invalid("bad GET index"))?;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'h' => {
                    let k = u64::from(self.u8()?);
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let k = u64::from(u32::from_le_bytes(self.le()?));
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                // Globals and calls.
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Item::Leaf(Value::Str(m)), Item::Leaf(Value::Str(n))) => {
                            self.global(&m, &n)?
                        }
                        _ => return self.invalid("STACK_GLOBAL of non-strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let args = self.tuple_items(args)?;
                    let callable = self.pop()?;
                    let g = self.as_global(&callable)?;
                    let r = self.call(g, args)?;
                    self.stack.push(r);
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        // NEWOBJ_EX: keyword arguments are not used by allowed classes.
                        self.pop()?;
                    }
                    let args = self.pop()?;
                    let args = self.tuple_items(args)?;
                    let class = self.pop()?;
                    let g = self.as_global(&class)?;
                    let r = self.call(g, args)?;
                    self.stack.push(r);
                }
                b'b' => {
                    let state = self.pop()?;
                    let slot = self.top_slot()?;
                    match &mut self.arena[slot] {
                        Slot::Object { state: s, .. } => *s = Some(state),
                        // `OrderedDict` carries `__dict__` (e.g. `_metadata` of a state dict):
                        // attributes nothing here reads.
                        Slot::Dict(_) => {}
                        Slot::List(_) => return self.invalid("BUILD on a list"),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Item::PersistentId(Box::new(pid)));
                }
                b'P' => {
                    let t = self.line()?.to_string();
                    self.stack.push(Item::PersistentId(Box::new(Item::Leaf(Value::Str(t)))));
                }
                other => {
                    return Err(PickleError::UnsupportedOpcode {
                        offset: self.op_at,
                        opcode: other,
                    });
                }
            }
        }
    }

    /// Removes the `Mark` item left below the items [`Unpickler::pop_mark`] took.
    fn pop_mark_item(&mut self) -> PickleResult<()> {
        match self.stack.pop() {
            Some(Item::Mark) => Ok(()),
            _ => self.invalid("MARK expected"),
        }
    }

    fn resolve(&mut self, item: &Item, depth: usize, path: &mut Vec<usize>) -> PickleResult<Value> {
        if depth > MAX_DEPTH {
            return self.invalid(format!("nested deeper than {MAX_DEPTH}"));
        }
        self.spend(match item {
            Item::Leaf(v) => value_cost(v),
            _ => 1,
        })?;
        let all = |u: &mut Self, items: &[Item], path: &mut Vec<usize>| {
            items.iter().map(|i| u.resolve(i, depth + 1, path)).collect::<PickleResult<Vec<_>>>()
        };
        Ok(match item {
            Item::Leaf(v) => v.clone(),
            Item::Mark => return self.invalid("a MARK left in a value"),
            Item::Tuple(items) => Value::Tuple(all(self, items, path)?),
            Item::PersistentId(pid) => {
                Value::PersistentId(Box::new(self.resolve(pid, depth + 1, path)?))
            }
            Item::Ref(i) => {
                if path.contains(i) {
                    return self.invalid("a recursive object");
                }
                path.push(*i);
                // Take the slot out while resolving it, to borrow the arena mutably.
                let slot = std::mem::replace(&mut self.arena[*i], Slot::List(Vec::new()));
                let value = match &slot {
                    Slot::List(items) => all(self, items, path).map(Value::List),
                    Slot::Dict(entries) => entries
                        .iter()
                        .map(|(k, v)| {
                            Ok((
                                self.resolve(k, depth + 1, path)?,
                                self.resolve(v, depth + 1, path)?,
                            ))
                        })
                        .collect::<PickleResult<Vec<_>>>()
                        .map(Value::Dict),
                    Slot::Object { class, args, state } => (|| {
                        let args = all(self, args, path)?;
                        let state = match state {
                            Some(s) => Some(Box::new(self.resolve(s, depth + 1, path)?)),
                            None => None,
                        };
                        Ok(Value::Object { class: *class, args, state })
                    })(),
                };
                self.arena[*i] = slot;
                path.pop();
                value?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(bytes: &[u8]) -> PickleResult<Value> {
        Unpickler::load(bytes).map(|(v, _)| v)
    }

    #[test]
    fn protocol_2_containers_and_memo() {
        // pickle.dumps({'a': [1, 2.5, 'x'], 'b': (None, True)}, protocol=2)
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eX\x01\x00\x00\x00bq\x04N\x88\x86q\x05u.";
        let v = load(p).unwrap_or(Value::None);
        assert_eq!(
            v.get("a"),
            Some(&Value::List(vec![Value::Int(1), Value::Float(2.5), Value::Str("x".into())]))
        );
        assert_eq!(v.get("b"), Some(&Value::Tuple(vec![Value::None, Value::Bool(true)])));
    }

    #[test]
    fn a_dict_memoized_while_empty_is_seen_filled() {
        // d = {}; pickle.dumps([d, d]) with d filled after BINPUT (as the pickler writes it).
        let p = b"\x80\x02]q\x00(}q\x01X\x01\x00\x00\x00kK\x07sh\x01e.";
        let v = load(p).unwrap_or(Value::None);
        let d = Value::Dict(vec![(Value::Str("k".into()), Value::Int(7))]);
        assert_eq!(v, Value::List(vec![d.clone(), d]));
    }

    #[test]
    fn namespace_and_ordered_dict() {
        // argparse.Namespace(arch='t', x=1) and collections.OrderedDict([('w', 3)]), protocol 2.
        let p = b"\x80\x02]q\x00(cargparse\nNamespace\nq\x01)\x81q\x02}q\x03(X\x04\x00\x00\x00archq\x04X\x01\x00\x00\x00tq\x05X\x01\x00\x00\x00xq\x06K\x01ubccollections\nOrderedDict\nq\x07)Rq\x08X\x01\x00\x00\x00wq\tK\x03se.";
        let v = load(p).unwrap_or(Value::None);
        let Value::List(items) = v else { panic!("{v:?}") };
        assert_eq!(items[0].get("arch").and_then(Value::as_str), Some("t"));
        assert_eq!(items[0].get("x").and_then(Value::as_int), Some(1));
        assert_eq!(items[1].get("w").and_then(Value::as_int), Some(3));
    }

    #[test]
    fn forbidden_globals_are_named() {
        let p = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.";
        let e = load(p);
        assert!(
            matches!(&e, Err(PickleError::ForbiddenGlobal { module, name, .. }) if module == "os" && name == "system"),
            "{e:?}"
        );
        assert!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("os.system"));
        let p = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        assert!(matches!(load(p), Err(PickleError::ForbiddenGlobal { .. })));
    }

    #[test]
    fn huge_length_fields_do_not_allocate() {
        // BINUNICODE claiming 4 GiB, BINBYTES8 claiming 2^62, LONG4 claiming 2^31 - 1.
        for p in [
            &b"\x80\x02X\xff\xff\xff\xffab"[..],
            &b"\x80\x04\x8e\x00\x00\x00\x00\x00\x00\x00\x40ab"[..],
            &b"\x80\x02\x8b\xff\xff\xff\x7fab"[..],
        ] {
            assert!(matches!(load(p), Err(PickleError::Truncated { .. })), "{p:?}");
        }
    }

    #[test]
    fn shared_references_cannot_explode() {
        // l0 = [] ; l1 = [l0, l0]; l2 = [l1, l1] ... 64 levels: 2^64 nodes once resolved.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for i in 1u8..=64 {
            p.extend_from_slice(&[b'(', b'h', i - 1, b'h', i - 1, b'l', b'q', i]);
        }
        p.push(b'.');
        let e = load(&p);
        assert!(matches!(e, Err(PickleError::Invalid { .. })), "{e:?}");
    }

    #[test]
    fn references_to_a_large_string_cannot_amplify_it() {
        // A 64 KiB string memoized, then fetched 10,000 times into a list (640 MB if copied).
        let mut p = b"\x80\x02](X\x00\x00\x01\x00".to_vec();
        p.extend(std::iter::repeat_n(b'a', 1 << 16));
        p.extend_from_slice(b"q\x00");
        for _ in 0..10_000 {
            p.extend_from_slice(b"h\x00");
        }
        p.extend_from_slice(b"e.");
        assert!(matches!(load(&p), Err(PickleError::Invalid { .. })));
    }

    #[test]
    fn bad_bytes_never_panic() {
        // Every prefix and a few corruptions of a real pickle: errors, no panics.
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eX\x01\x00\x00\x00bq\x04N\x88\x86q\x05u.";
        for n in 0..p.len() {
            assert!(load(&p[..n]).is_err(), "prefix {n}");
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut q = p.to_vec();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % q.len() as u64) as usize;
                q[at] = (state >> 32) as u8;
            }
            let _ = load(&q);
        }
        for p in [&b"("[..], b"0.", b"1.", b"t.", b"\x80\x02h\x05.", b"a.", b"\x80\x02)b."] {
            assert!(load(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn stream_positions_let_pickles_follow_each_other() {
        let two = b"\x80\x02K\x05.\x80\x02K\x06.";
        let (a, n) = Unpickler::load(two).unwrap_or((Value::None, 0));
        assert_eq!((a, n), (Value::Int(5), 5));
        assert_eq!(load(&two[n..]), Ok(Value::Int(6)));
    }
}
