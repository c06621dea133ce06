//! The subset of Python's pickle that `torch.save` writes (protocols 2–5, as a value tree).
//!
//! Classes are not instantiated: a `GLOBAL` is a name, `REDUCE`/`NEWOBJ`/`BUILD` on it an
//! [`Value::Object`], except the few constructors a state dict is made of (`OrderedDict`,
//! `torch._utils._rebuild_tensor*`, `_rebuild_parameter`), which become dicts and
//! [`TensorRef`]s. Storages come from persistent ids and are only described here (key, dtype,
//! element count); their bytes are read by the caller, which checks that every byte is there.
//!
//! A memoised container is stored by value: a later `GET` of a dict that was mutated after its
//! `PUT` sees the earlier contents. `torch.save` memoises containers only to share them, which
//! state dicts do not do; storages (the shared objects of a checkpoint) are immutable.

use std::collections::HashMap;

/// Element types of PyTorch storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// float64.
    F64,
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    Bf16,
    /// int64.
    I64,
    /// int32.
    I32,
    /// int16.
    I16,
    /// int8.
    I8,
    /// uint8.
    U8,
    /// bool.
    Bool,
}

impl Dtype {
    /// The storage class (`torch.FloatStorage`) or dtype (`torch.float32`) name.
    fn from_torch_name(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" | "float64" | "double" => Dtype::F64,
            "FloatStorage" | "float32" | "float" => Dtype::F32,
            "HalfStorage" | "float16" | "half" => Dtype::F16,
            "BFloat16Storage" | "bfloat16" => Dtype::Bf16,
            "LongStorage" | "int64" | "long" => Dtype::I64,
            "IntStorage" | "int32" | "int" => Dtype::I32,
            "ShortStorage" | "int16" | "short" => Dtype::I16,
            "CharStorage" | "int8" => Dtype::I8,
            "ByteStorage" | "uint8" => Dtype::U8,
            "BoolStorage" | "bool" => Dtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::Bf16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// PyTorch's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F64 => "float64",
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I16 => "int16",
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::Bool => "bool",
        }
    }
}

/// A storage named by a persistent id: `('storage', torch.FloatStorage, '0', 'cpu', numel)`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StorageRef {
    /// The key of its bytes (`data/<key>` in a zip archive; the order key in a legacy file).
    pub key: String,
    pub dtype: Dtype,
    /// Elements in the whole storage.
    pub numel: usize,
}

/// A tensor: a strided view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    /// In elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// In elements.
    pub stride: Vec<usize>,
}

impl TensorRef {
    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().fold(1, |n, d| n.saturating_mul(*d))
    }

    /// One past the last storage element the view reads (0 for an empty tensor); saturating, so
    /// that a hostile file's sizes compare as too big rather than wrap.
    pub(crate) fn storage_end(&self) -> usize {
        if self.shape.contains(&0) {
            return 0;
        }
        self.shape
            .iter()
            .zip(&self.stride)
            .fold(self.offset.saturating_add(1), |end, (n, s)| {
                end.saturating_add((n - 1).saturating_mul(*s))
            })
    }
}

/// A decoded pickle value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as its little-endian bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// In insertion order (`OrderedDict`s are dicts too).
    Dict(Vec<(Value, Value)>),
    /// `module.name`, not instantiated.
    Global(String, String),
    /// An instance of a class we do not build: its class, constructor arguments and state.
    Object {
        class: Box<Value>,
        args: Box<Value>,
        state: Option<Box<Value>>,
    },
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// Why a pickle could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PickleError {
    /// The stream ended before `STOP`.
    #[error("the data ends in the middle of the pickle (at byte {0})")]
    Truncated(usize),
    #[error("unsupported pickle opcode 0x{opcode:02x} at byte {at}")]
    Opcode { opcode: u8, at: usize },
    #[error("malformed pickle at byte {at}: {message}")]
    Malformed { at: usize, message: String },
}

/// Decodes one pickle from `data`; returns it and the number of bytes it took.
pub(crate) fn read(data: &[u8]) -> Result<(Value, usize), PickleError> {
    read_with_storages(data).map(|(value, used, _)| (value, used))
}

/// [`read`], and every storage its persistent ids named (also those of tensors inside objects
/// that [`Value`] trees are not walked into).
pub(crate) fn read_with_storages(
    data: &[u8],
) -> Result<(Value, usize, Vec<StorageRef>), PickleError> {
    let mut vm = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        storages: Vec::new(),
    };
    let value = vm.run()?;
    Ok((value, vm.pos, vm.storages))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    storages: Vec<StorageRef>,
}

impl Machine<'_> {
    fn malformed(&self, message: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.pos,
            message: message.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or(PickleError::Truncated(self.data.len()))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn len(&mut self, n: u64) -> Result<usize, PickleError> {
        usize::try_from(n).map_err(|_| self.malformed("a length does not fit in memory"))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.data.len()))?;
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(line)
    }

    fn string(&mut self, n: usize) -> Result<String, PickleError> {
        let bytes = self.take(n)?.to_vec();
        String::from_utf8(bytes).map_err(|_| self.malformed("a string is not UTF-8"))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let at = self.pos;
        self.stack.last_mut().ok_or(PickleError::Malformed {
            at,
            message: "stack underflow".into(),
        })
    }

    /// Pops everything above the last mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed("no mark"))?;
        if mark > self.stack.len() {
            return Err(self.malformed("mark above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&self, key: u32) -> Result<Value, PickleError> {
        self.memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.malformed(format!("memo key {key} is not set")))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let value = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.malformed("stack underflow"))?;
        self.memo.insert(key, value);
        Ok(())
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let opcode = self.u8()?;
            match opcode {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?.clone();
                    self.stack.push(top);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a | 0x8b => {
                    let n = if opcode == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = self.u32()? as u64;
                        self.len(n)?
                    };
                    let bytes = self.take(n)?;
                    if n > 8 {
                        // Only `torch.save`'s magic number is this wide.
                        let wide = Value::BigInt(bytes.to_vec());
                        self.stack.push(wide);
                        continue;
                    }
                    // Little-endian two's complement, sign-extended.
                    let mut v: i64 = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                        -1
                    } else {
                        0
                    };
                    for &b in bytes.iter().rev() {
                        v = (v << 8) | i64::from(b);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'I' | b'L' => {
                    let line = self.line()?;
                    let text = line.trim_end_matches('L');
                    let v = match text {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(
                            text.parse()
                                .map_err(|_| self.malformed(format!("bad integer `{line}`")))?,
                        ),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v));
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line
                        .parse()
                        .map_err(|_| self.malformed(format!("bad float `{line}`")))?;
                    self.stack.push(Value::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match opcode {
                        b'X' => self.u32()? as u64,
                        0x8c => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len(n)?;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                b'V' => {
                    let line = self.line()?;
                    self.stack.push(Value::Str(line));
                }
                b'T' | b'U' => {
                    // Python 2 byte strings (legacy checkpoints' keys were such, decoded as text).
                    let n = if opcode == b'T' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let text = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(text));
                }
                b'S' => {
                    let line = self.line()?;
                    self.stack
                        .push(Value::Str(line.trim_matches(['\'', '"']).to_string()));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match opcode {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len(n)?;
                    let bytes = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(bytes));
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                0x8f => self.stack.push(Value::List(Vec::new())), // EMPTY_SET
                b'd' => {
                    let items = self.pop_mark()?;
                    let dict = pairs(items).ok_or_else(|| self.malformed("odd DICT"))?;
                    self.stack.push(Value::Dict(dict));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items)); // FROZENSET
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (opcode - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.malformed("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let items = pairs(items).ok_or_else(|| self.malformed("odd SETITEMS"))?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let value = self.pop()?;
                    self.append(vec![value])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'p' => {
                    let line = self.line()?;
                    let key = line
                        .parse()
                        .map_err(|_| self.malformed(format!("bad memo key `{line}`")))?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let key = self.u8()?.into();
                    self.memo_put(key)?;
                }
                b'r' => {
                    let key = self.u32()?;
                    self.memo_put(key)?;
                }
                0x94 => {
                    let key = self.memo.len() as u32;
                    self.memo_put(key)?;
                }
                b'g' => {
                    let line = self.line()?;
                    let key = line
                        .parse()
                        .map_err(|_| self.malformed(format!("bad memo key `{line}`")))?;
                    let v = self.memo_get(key)?;
                    self.stack.push(v);
                }
                b'h' => {
                    let key = self.u8()?.into();
                    let v = self.memo_get(key)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let key = self.u32()?;
                    let v = self.memo_get(key)?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err(self.malformed("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.stack.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let v = self.call(class, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    match target {
                        // Attributes of an `OrderedDict` (a state dict's `_metadata`).
                        Value::Dict(_) => {}
                        Value::Object { state: slot, .. } => *slot = Some(Box::new(state)),
                        // `_rebuild_parameter` already made the tensor.
                        Value::Tensor(_) => {}
                        _ => return Err(self.malformed("BUILD on a value without state")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'P' => {
                    let line = self.line()?;
                    let v = self.persistent(Value::Str(line))?;
                    self.stack.push(v);
                }
                _ => return Err(PickleError::Opcode { opcode, at }),
            }
        }
    }

    fn set_items(&mut self, items: Vec<(Value, Value)>) -> Result<(), PickleError> {
        match self.top()? {
            Value::Dict(dict) => {
                dict.extend(items);
                Ok(())
            }
            // `dict` subclasses pickled by `__reduce__` (not built): keep their items as state.
            Value::Object { state, .. } => {
                if let Value::Dict(dict) = state
                    .get_or_insert_with(|| Box::new(Value::Dict(Vec::new())))
                    .as_mut()
                {
                    dict.extend(items);
                }
                Ok(())
            }
            _ => Err(self.malformed("SETITEMS on a value that is not a dict")),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        match self.top()? {
            Value::List(list) => {
                list.extend(items);
                Ok(())
            }
            Value::Object { .. } => Ok(()),
            _ => Err(self.malformed("APPENDS on a value that is not a list")),
        }
    }

    /// `('storage', storage_type, key, location, numel[, view_metadata])`.
    fn persistent(&mut self, pid: Value) -> Result<Value, PickleError> {
        let Value::Tuple(items) = pid else {
            return Err(self.malformed("a persistent id that is not a tuple"));
        };
        match items.as_slice() {
            [
                Value::Str(kind),
                storage_type,
                Value::Str(key),
                _location,
                Value::Int(numel),
                ..,
            ] if kind == "storage" => {
                let type_name = match storage_type {
                    Value::Global(_, name) | Value::Str(name) => name.as_str(),
                    _ => "",
                };
                let dtype = Dtype::from_torch_name(type_name)
                    .ok_or_else(|| self.malformed(format!("unknown storage type `{type_name}`")))?;
                let storage = StorageRef {
                    key: key.clone(),
                    dtype,
                    numel: usize::try_from(*numel)
                        .map_err(|_| self.malformed("a negative storage size"))?,
                };
                self.storages.push(storage.clone());
                Ok(Value::Storage(storage))
            }
            // `torch.save(model)` in the legacy format names each module's class this way.
            [Value::Str(kind), class, ..] if kind == "module" => Ok(class.clone()),
            _ => Err(self.malformed("a persistent id that is not a storage")),
        }
    }

    fn call(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(module, name) = &callable else {
            return Ok(object(callable, args));
        };
        let args_list = match &args {
            Value::Tuple(items) | Value::List(items) => items.as_slice(),
            _ => &[],
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                Ok(Value::Dict(match args_list.first() {
                    Some(Value::List(items)) => items
                        .iter()
                        .filter_map(|pair| match pair {
                            Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => {
                                Some((kv[0].clone(), kv[1].clone()))
                            }
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                }))
            }
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3") => {
                self.rebuild_tensor(name, args_list)
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                match args_list.first() {
                    Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                    _ => Ok(object(callable, args)),
                }
            }
            // `Tensor.__reduce_ex__` of tensors with Python state: (func, type, args, state).
            ("torch._tensor", "_rebuild_from_type_v2") => match args_list {
                [func, _type, Value::Tuple(inner), ..] => {
                    self.call(func.clone(), Value::Tuple(inner.clone()))
                }
                _ => Ok(object(callable, args)),
            },
            _ => Ok(object(callable, args)),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, meta])`;
    /// `_rebuild_tensor_v3` adds the dtype after the hooks (untyped storages).
    fn rebuild_tensor(&self, name: &str, args: &[Value]) -> Result<Value, PickleError> {
        let ints = |v: &Value| -> Option<Vec<usize>> {
            match v {
                Value::Tuple(items) | Value::List(items) => items
                    .iter()
                    .map(|i| match i {
                        Value::Int(n) => usize::try_from(*n).ok(),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            }
        };
        let (Some(Value::Storage(storage)), Some(Value::Int(offset)), Some(shape), Some(stride)) = (
            args.first(),
            args.get(1),
            args.get(2).and_then(ints),
            args.get(3).and_then(ints),
        ) else {
            return Err(self.malformed(format!("unexpected arguments of `{name}`")));
        };
        let mut storage = storage.clone();
        if name == "_rebuild_tensor_v3"
            && let Some(Value::Global(_, dtype)) = args.get(6)
        {
            let dtype = Dtype::from_torch_name(dtype)
                .ok_or_else(|| self.malformed(format!("unknown dtype `{dtype}`")))?;
            // An untyped storage counts bytes.
            storage.numel = storage
                .numel
                .checked_mul(storage.dtype.size())
                .ok_or_else(|| self.malformed("a storage size that overflows"))?
                / dtype.size();
            storage.dtype = dtype;
        }
        if shape.len() != stride.len() {
            return Err(self.malformed("a tensor whose size and stride differ in length"));
        }
        Ok(Value::Tensor(TensorRef {
            storage,
            offset: usize::try_from(*offset).map_err(|_| self.malformed("a negative offset"))?,
            shape,
            stride,
        }))
    }
}

fn object(class: Value, args: Value) -> Value {
    Value::Object {
        class: Box::new(class),
        args: Box::new(args),
        state: None,
    }
}

fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if items.len() % 2 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_protocol_2_containers_and_numbers() {
        // pickle.dumps({'a': [1, -2, 300, 70000, 2**40, 1.5, True, None], 'b': ('x',)}, protocol=2)
        let bytes = b"\x80\x02\x7d\x71\x00\x28\x58\x01\x00\x00\x00\x61\x71\x01\x5d\x71\x02\x28\x4b\x01\x4a\xfe\xff\xff\xff\x4d\x2c\x01\x4a\x70\x11\x01\x00\x8a\x06\x00\x00\x00\x00\x00\x01\x47\x3f\xf8\x00\x00\x00\x00\x00\x00\x88\x4e\x65\x58\x01\x00\x00\x00\x62\x71\x03\x58\x01\x00\x00\x00\x78\x71\x04\x85\x71\x05\x75\x2e";
        let (value, used) = read(bytes).unwrap();
        assert_eq!(used, bytes.len());
        let Value::Dict(items) = value else {
            panic!("not a dict")
        };
        assert_eq!(items[0].0, Value::Str("a".into()));
        assert_eq!(
            items[0].1,
            Value::List(vec![
                Value::Int(1),
                Value::Int(-2),
                Value::Int(300),
                Value::Int(70000),
                Value::Int(1 << 40),
                Value::Float(1.5),
                Value::Bool(true),
                Value::None
            ])
        );
        assert_eq!(items[1].1, Value::Tuple(vec![Value::Str("x".into())]));
    }

    #[test]
    fn a_cut_pickle_is_truncated_not_garbage() {
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01";
        assert!(matches!(read(bytes), Err(PickleError::Truncated(_))));
    }

    #[test]
    fn strided_views_know_their_extent() {
        let t = TensorRef {
            storage: StorageRef {
                key: "0".into(),
                dtype: Dtype::F32,
                numel: 20,
            },
            offset: 2,
            shape: vec![3, 2],
            stride: vec![1, 3],
        };
        assert_eq!(t.storage_end(), 2 + 2 + 3 + 1);
        assert_eq!(t.numel(), 6);
    }
}
