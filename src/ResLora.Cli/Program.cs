using System.CommandLine;
using ResLora;
using ResLora.Cli;

// Before any tensor exists: libtorch reads its huge-page setting once, at its first allocation.
RuntimeOptions.UseHugePages();
// Before libtorch loads: its OpenMP runtime reads its wait policy once (threads sleep instead of spinning when they wait).
RuntimeOptions.WaitPassively();
return CliApp.Run(args);
