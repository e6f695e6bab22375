// TorchSharp's names are used in nearly every file; one place for them instead of the same lines at the top of each.
global using TorchSharp;
global using TorchSharp.Modules;
global using static TorchSharp.torch;
// Only for IO/Templates/ChatFormat.cs, which loads a tokenizer and is moving to Text/Templates in its own change; drop
// this line once it has moved (until then the layer test exempts it).
global using ResLora.Text;
