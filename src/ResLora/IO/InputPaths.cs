using System.Text.RegularExpressions;

namespace ResLora.IO;

/// <summary>
/// The one place a user-given model folder or data file is checked before it is read, so every verb and library entry
/// point gives the same actionable message: a missing folder that looks like a Hugging Face hub id is told that reslora
/// never downloads (and how to download it), a file given as a folder or a folder given as a file is named as such.
/// </summary>
public static partial class InputPaths
{
    /// <summary>What a model folder holds, for messages.</summary>
    public const string ModelFolderContents = "config.json, *.safetensors, tokenizer.json";

    /// <summary>
    /// Returns <paramref name="dir"/> when it is an existing folder; otherwise a <see cref="DirectoryNotFoundException"/>
    /// (missing) or <see cref="UserInputException"/> (a file) naming <paramref name="flag"/> (when given) and the fix.
    /// </summary>
    public static string ExistingModelFolder(string? dir, string? flag = "--model")
    {
        string what = flag is null ? "" : flag + " ";
        if (string.IsNullOrWhiteSpace(dir))
            throw new UserInputException($"{flag ?? "the model folder"} is required: a Hugging Face model folder ({ModelFolderContents}).");
        if (Directory.Exists(dir)) return dir;
        if (File.Exists(dir))
            throw new UserInputException($"{what}{dir} is a file, not a folder; pass the Hugging Face model folder that holds it ({ModelFolderContents}).");
        if (LooksLikeHubId(dir))
            throw new DirectoryNotFoundException(
                $"{what}{dir}: no such folder. It looks like a Hugging Face hub id, but reslora never downloads models; download it first, "
                + $"e.g. `huggingface-cli download {dir} --local-dir DIR`, then pass {flag ?? "--model"} DIR.");
        throw new DirectoryNotFoundException($"{what}{dir}: no such folder. Pass a Hugging Face model folder ({ModelFolderContents}).");
    }

    /// <summary>
    /// Returns <paramref name="path"/> when it is an existing file; a folder, or a missing path, is an error naming
    /// <paramref name="what"/> (e.g. "data file") and the kinds of file expected (<paramref name="expected"/>).
    /// </summary>
    public static string DataFile(string path, string what = "data file", string expected = "a JSONL, JSON, TSV or CSV file")
    {
        if (File.Exists(path)) return path;
        if (Directory.Exists(path))
            throw new UserInputException($"{path}: is a directory, not a {what}; give {expected} (one file, not the folder that holds it).");
        throw new FileNotFoundException($"{path}: {what} not found; give {expected}.", path);
    }

    /// <summary>
    /// True for "owner/name" (one slash, hub-legal characters, no leading dot or slash): what a hub id looks like, and a
    /// relative path rarely is when it does not exist.
    /// </summary>
    public static bool LooksLikeHubId(string s) => HubId().IsMatch(s);

    [GeneratedRegex(@"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$", RegexOptions.CultureInvariant)]
    private static partial Regex HubId();
}
