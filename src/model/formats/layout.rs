//! OpenAI's Whisper layout (separate query, key and value projections, no key bias) mapped onto
//! the internal tensors.
//!
//! Hugging Face Transformers and whisper.cpp store the same tensors as OpenAI's PyTorch model,
//! under two naming schemes ([`HF_NAMES`], [`OPENAI_NAMES`]). The internal model is CTranslate2's
//! layout, which fuses the projections: self-attention `linear_0` is `[q; k; v]` (3d x d) with
//! bias `[b_q; 0; b_v]`, cross-attention `linear_1` is `[k; v]` with bias `[0; b_v]` (Whisper's
//! key projections have no bias), exactly as CTranslate2's converter fuses them. The fused
//! tensors are concatenations of the stored ones, so nothing is copied here.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::model::blob::Blob;
use crate::model::weights::{Part, StoredType, Tensor};
use crate::model::ModelError;

/// One tensor as a file stores it (row-major, PyTorch's axis order).
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub blob: Arc<Blob>,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub ty: StoredType,
}

/// A format's tensor names, as patterns where `{i}` is the layer index.
pub(crate) struct Names {
    pub enc_layer: &'static str,
    pub dec_layer: &'static str,
    pub conv1: &'static str,
    pub conv2: &'static str,
    pub enc_pos: &'static str,
    pub enc_ln: &'static str,
    pub dec_embed: &'static str,
    pub dec_pos: &'static str,
    pub dec_ln: &'static str,
    /// Inside a layer: attention layer norm, q, k, v, out of self-attention.
    pub self_ln: &'static str,
    pub self_qkvo: [&'static str; 4],
    pub cross_ln: &'static str,
    pub cross_qkvo: [&'static str; 4],
    pub ffn_ln: &'static str,
    pub fc1: &'static str,
    pub fc2: &'static str,
    /// Suffixes of a layer norm's scale and shift, and of a linear layer's weight and bias.
    pub ln_scale: &'static str,
    pub ln_shift: &'static str,
}

/// Hugging Face Transformers' `WhisperForConditionalGeneration` (`model.` prefix).
pub(crate) const HF_NAMES: Names = Names {
    enc_layer: "model.encoder.layers.{i}.",
    dec_layer: "model.decoder.layers.{i}.",
    conv1: "model.encoder.conv1",
    conv2: "model.encoder.conv2",
    enc_pos: "model.encoder.embed_positions.weight",
    enc_ln: "model.encoder.layer_norm",
    dec_embed: "model.decoder.embed_tokens.weight",
    dec_pos: "model.decoder.embed_positions.weight",
    dec_ln: "model.decoder.layer_norm",
    self_ln: "self_attn_layer_norm",
    self_qkvo: [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
    ],
    cross_ln: "encoder_attn_layer_norm",
    cross_qkvo: [
        "encoder_attn.q_proj",
        "encoder_attn.k_proj",
        "encoder_attn.v_proj",
        "encoder_attn.out_proj",
    ],
    ffn_ln: "final_layer_norm",
    fc1: "fc1",
    fc2: "fc2",
    ln_scale: "weight",
    ln_shift: "bias",
};

/// OpenAI's own names (`whisper/model.py`), which whisper.cpp's converter keeps.
pub(crate) const OPENAI_NAMES: Names = Names {
    enc_layer: "encoder.blocks.{i}.",
    dec_layer: "decoder.blocks.{i}.",
    conv1: "encoder.conv1",
    conv2: "encoder.conv2",
    enc_pos: "encoder.positional_embedding",
    enc_ln: "encoder.ln_post",
    dec_embed: "decoder.token_embedding.weight",
    dec_pos: "decoder.positional_embedding",
    dec_ln: "decoder.ln",
    self_ln: "attn_ln",
    self_qkvo: ["attn.query", "attn.key", "attn.value", "attn.out"],
    cross_ln: "cross_attn_ln",
    cross_qkvo: [
        "cross_attn.query",
        "cross_attn.key",
        "cross_attn.value",
        "cross_attn.out",
    ],
    ffn_ln: "mlp_ln",
    fc1: "mlp.0",
    fc2: "mlp.2",
    ln_scale: "weight",
    ln_shift: "bias",
};

/// Builds the internal tensors from `stored` (a format's tensors by name).
pub(crate) struct Mapper<'a> {
    pub path: &'a Path,
    pub stored: &'a HashMap<String, Stored>,
    pub names: &'a Names,
    pub out: HashMap<String, Tensor>,
}

impl Mapper<'_> {
    fn get(&self, name: &str) -> Result<&Stored, ModelError> {
        self.stored
            .get(name)
            .ok_or_else(|| ModelError::MissingVariable {
                path: self.path.to_path_buf(),
                name: name.to_string(),
            })
    }

    fn part(&self, name: &str, s: &Stored) -> Result<Part, ModelError> {
        let numel = s.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        numel
            .ok_or_else(|| format!("shape {:?} overflows", s.shape))
            .and_then(|n| Part::stored(&s.blob, s.offset, n, s.ty))
            .map_err(|reason| ModelError::Malformed {
                path: s.blob.path().to_path_buf(),
                reason: format!("tensor {name:?}: {reason}"),
            })
    }

    fn insert(
        &mut self,
        internal: String,
        shape: Vec<usize>,
        source: String,
        parts: Vec<Part>,
    ) -> Result<(), ModelError> {
        let t = Tensor::new(shape, source, parts).map_err(|reason| ModelError::Malformed {
            path: self.path.to_path_buf(),
            reason,
        })?;
        self.out.insert(internal, t);
        Ok(())
    }

    /// One stored tensor under an internal name.
    fn copy(&mut self, internal: String, name: &str) -> Result<(), ModelError> {
        let s = self.get(name)?.clone();
        let part = self.part(name, &s)?;
        self.insert(internal, s.shape.clone(), name.to_string(), vec![part])
    }

    /// A 1-D stored tensor (any shape of that many values: ggml keeps conv biases as `d x 1`).
    fn copy_1d(&mut self, internal: String, name: &str) -> Result<(), ModelError> {
        let s = self.get(name)?.clone();
        let part = self.part(name, &s)?;
        let n = s.shape.iter().product();
        self.insert(internal, vec![n], name.to_string(), vec![part])
    }

    /// `[w_0; w_1; ...]` along the rows; biases likewise, zeros where a projection has none.
    fn fuse(&mut self, internal: &str, linears: &[String]) -> Result<(), ModelError> {
        let mut w_parts = Vec::new();
        let mut b_parts = Vec::new();
        let mut rows = 0;
        let mut cols = None;
        let mut any_bias = false;
        for l in linears {
            let wname = format!("{l}.weight");
            let w = self.get(&wname)?.clone();
            let [r, c] = w.shape[..] else {
                return Err(ModelError::UnexpectedShape {
                    path: self.path.to_path_buf(),
                    name: wname,
                    expected: "a matrix [n_out, n_in]".into(),
                    found: w.shape.clone(),
                });
            };
            if *cols.get_or_insert(c) != c {
                return Err(ModelError::Mismatch {
                    path: self.path.to_path_buf(),
                    reason: format!(
                        "{wname} has {c} columns, the other projections of {} have {}",
                        linears.join(", "),
                        cols.unwrap_or(0)
                    ),
                });
            }
            w_parts.push(self.part(&wname, &w)?);
            rows += r;
            let bname = format!("{l}.bias");
            match self.stored.get(&bname).cloned() {
                Some(b) => {
                    if b.shape.iter().product::<usize>() != r {
                        return Err(ModelError::UnexpectedShape {
                            path: self.path.to_path_buf(),
                            name: bname,
                            expected: format!("[{r}]"),
                            found: b.shape.clone(),
                        });
                    }
                    b_parts.push(self.part(&bname, &b)?);
                    any_bias = true;
                }
                None => b_parts.push(Part::Zeros(r)),
            }
        }
        let source = linears.join(" + ");
        let cols = cols.unwrap_or(0);
        self.insert(
            format!("{internal}/weight"),
            vec![rows, cols],
            format!("{source} (weights)"),
            w_parts,
        )?;
        if any_bias {
            self.insert(
                format!("{internal}/bias"),
                vec![rows],
                format!("{source} (biases)"),
                b_parts,
            )?;
        }
        Ok(())
    }

    fn linear(&mut self, internal: &str, name: &str) -> Result<(), ModelError> {
        self.fuse(internal, &[name.to_string()])
    }

    fn layer_norm(&mut self, internal: &str, name: &str) -> Result<(), ModelError> {
        let n = self.names;
        self.copy_1d(
            format!("{internal}/gamma"),
            &format!("{name}.{}", n.ln_scale),
        )?;
        self.copy_1d(
            format!("{internal}/beta"),
            &format!("{name}.{}", n.ln_shift),
        )
    }

    /// Number of layers `pattern` (with `{i}`) has, counting from 0 while the prefix exists.
    fn count_layers(&self, pattern: &str) -> usize {
        let (head, tail) = pattern.split_once("{i}").unwrap_or((pattern, ""));
        let mut found = std::collections::BTreeSet::new();
        for name in self.stored.keys() {
            if let Some(rest) = name.strip_prefix(head) {
                if let Some((n, after)) = rest.split_once(tail) {
                    if !after.is_empty() {
                        if let Ok(n) = n.parse::<usize>() {
                            found.insert(n);
                        }
                    }
                }
            }
        }
        (0..).take_while(|i| found.contains(i)).count()
    }

    /// Maps every tensor of the encoder and the decoder.
    pub(crate) fn map_all(mut self) -> Result<HashMap<String, Tensor>, ModelError> {
        let n = self.names;
        for (internal, name) in [("encoder/conv1", n.conv1), ("encoder/conv2", n.conv2)] {
            self.copy(format!("{internal}/weight"), &format!("{name}.weight"))?;
            self.copy_1d(format!("{internal}/bias"), &format!("{name}.bias"))?;
        }
        self.copy("encoder/position_encodings/encodings".into(), n.enc_pos)?;
        self.layer_norm("encoder/layer_norm", n.enc_ln)?;
        let enc_layers = self.count_layers(n.enc_layer);
        for l in 0..enc_layers {
            let p = n.enc_layer.replace("{i}", &l.to_string());
            let i = format!("encoder/layer_{l}");
            self.common_layer(&i, &p)?;
        }

        self.copy("decoder/embeddings/weight".into(), n.dec_embed)?;
        self.copy("decoder/position_encodings/encodings".into(), n.dec_pos)?;
        self.layer_norm("decoder/layer_norm", n.dec_ln)?;
        let dec_layers = self.count_layers(n.dec_layer);
        for l in 0..dec_layers {
            let p = n.dec_layer.replace("{i}", &l.to_string());
            let i = format!("decoder/layer_{l}");
            self.common_layer(&i, &p)?;
            let [q, k, v, o] = n.cross_qkvo.map(|s| format!("{p}{s}"));
            self.layer_norm(
                &format!("{i}/attention/layer_norm"),
                &format!("{p}{}", n.cross_ln),
            )?;
            self.linear(&format!("{i}/attention/linear_0"), &q)?;
            self.fuse(&format!("{i}/attention/linear_1"), &[k, v])?;
            self.linear(&format!("{i}/attention/linear_2"), &o)?;
        }
        // Whisper ties the output projection to the token embeddings (CTranslate2 names it too).
        if let Some(t) = self.out.get("decoder/embeddings/weight").cloned() {
            self.out.insert("decoder/projection/weight".into(), t);
        }
        Ok(self.out)
    }

    /// Self-attention and feed-forward block, shared by encoder and decoder layers.
    fn common_layer(&mut self, i: &str, p: &str) -> Result<(), ModelError> {
        let n = self.names;
        let [q, k, v, o] = n.self_qkvo.map(|s| format!("{p}{s}"));
        self.layer_norm(
            &format!("{i}/self_attention/layer_norm"),
            &format!("{p}{}", n.self_ln),
        )?;
        self.fuse(&format!("{i}/self_attention/linear_0"), &[q, k, v])?;
        self.linear(&format!("{i}/self_attention/linear_1"), &o)?;
        self.layer_norm(&format!("{i}/ffn/layer_norm"), &format!("{p}{}", n.ffn_ln))?;
        self.linear(&format!("{i}/ffn/linear_0"), &format!("{p}{}", n.fc1))?;
        self.linear(&format!("{i}/ffn/linear_1"), &format!("{p}{}", n.fc2))?;
        Ok(())
    }
}
