//! Documents' ids → the arrays a `.bin`/`.idx` part is written from (what `pipeline.pack` does
//! in Python): tokens back to back in the output dtype with an EOD after every non-empty
//! document, the length of each sequence, and the number of sequences of each document.
//! Empty documents give no sequence and no EOD, as Megatron-LM does.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    U16,
    I32,
    U32,
}

impl DType {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "uint16" => Some(Self::U16),
            "int32" => Some(Self::I32),
            "uint32" => Some(Self::U32),
            _ => None,
        }
    }

    fn max(self) -> u32 {
        match self {
            Self::U16 => u16::MAX as u32,
            Self::I32 => i32::MAX as u32,
            Self::U32 => u32::MAX,
        }
    }

    pub fn itemsize(self) -> usize {
        match self {
            Self::U16 => 2,
            _ => 4,
        }
    }
}

/// Collects documents as they are encoded.
pub struct Packer {
    eod: Option<u32>,
    pub tokens: Vec<u32>,
    pub seq_lens: Vec<i32>,
    pub docs: Vec<i32>,
}

impl Packer {
    pub fn new(eod: Option<u32>, capacity: usize) -> Self {
        Self {
            eod,
            tokens: Vec::with_capacity(capacity),
            seq_lens: Vec::new(),
            docs: Vec::new(),
        }
    }

    /// Close the document whose ids were appended to `tokens` since `start`.
    pub fn end_document(&mut self, start: usize) -> Result<(), String> {
        let n = self.tokens.len() - start;
        if n == 0 {
            self.docs.push(0);
            return Ok(());
        }
        if let Some(e) = self.eod {
            self.tokens.push(e);
        }
        let len = self.tokens.len() - start;
        let len = i32::try_from(len).map_err(|_| format!("a document of {len} tokens does not fit int32 lengths"))?;
        self.seq_lens.push(len);
        self.docs.push(1);
        Ok(())
    }

    /// The tokens as little-endian bytes of `dtype`, or the first id that does not fit.
    pub fn write_tokens(&self, dtype: DType, buf: &mut [u8]) -> Result<(), u32> {
        let max = dtype.max();
        if let Some(&bad) = self.tokens.iter().find(|&&t| t > max) {
            return Err(bad);
        }
        match dtype {
            DType::U16 => {
                for (c, &t) in buf.chunks_exact_mut(2).zip(&self.tokens) {
                    c.copy_from_slice(&(t as u16).to_le_bytes());
                }
            }
            DType::I32 | DType::U32 => {
                for (c, &t) in buf.chunks_exact_mut(4).zip(&self.tokens) {
                    c.copy_from_slice(&t.to_le_bytes());
                }
            }
        }
        Ok(())
    }
}
