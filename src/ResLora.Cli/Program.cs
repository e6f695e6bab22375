using System.CommandLine;
using ResLora.Cli;

return CliApp.Run(args);
