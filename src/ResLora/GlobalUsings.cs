// TorchSharp's names are used in nearly every file; one place for them instead of the same lines at the top of each.
global using TorchSharp;
global using TorchSharp.Modules;
global using static TorchSharp.torch;
