using System.CommandLine;
using ResLora;
using ResLora.Cli;

// Before any tensor exists: libtorch reads its huge-page setting once, at its first allocation.
RuntimeOptions.UseHugePages();
return CliApp.Run(args);
